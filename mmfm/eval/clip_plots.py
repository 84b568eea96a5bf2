"""One summary PNG for a CLIP run: the loss curve beside a retrieval example grid (image -> top captions)."""
from __future__ import annotations

from pathlib import Path

import torch

from .zeroshot import encode_images, encode_texts


@torch.no_grad()
def retrieval_examples(model, images: torch.Tensor, labels: torch.Tensor, sources: list[str], classes: dict,
                       per_source: int = 3, k: int = 3, tokenizer=None) -> list[dict]:
    """For a few test images per source: the k best class prompts out of every source's class names."""
    tok = tokenizer or model.tokenizer
    pool = [(src, c) for src in sorted(classes) for c in classes[src]["classnames"]]
    texts = [classes[src]["prompts"][0].format(c) for src, c in pool]
    txt = encode_texts(model, tok, texts)
    out = []
    for src in sorted(set(sources)):
        first = {}  # the first test image of each class: a varied grid
        for i, (s, lab) in enumerate(zip(sources, labels.tolist())):
            if s == src and (lab >= 0 or src not in classes):  # -1: no class (e.g. a caption never trained on)
                first.setdefault(lab, i)
        rows = list(first.values())[:per_source]
        if not rows:
            continue
        img = encode_images(model, images[rows])
        scores = img @ txt.T  # (n, P) cosine similarities
        for r, s in zip(rows, scores):
            top = s.topk(min(k, len(texts)))
            truth = classes[src]["classnames"][int(labels[r])] if src in classes else "?"
            out.append({"image": images[r], "truth": truth,
                        "top": [(texts[j], float(v)) for v, j in zip(top.values, top.indices)]})
    return out


def plot_summary(history: dict, examples: list[dict], path: str | Path, image_mean, image_std, title: str = ""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(examples)
    fig = plt.figure(figsize=(12, max(4, 1.3 * n)), dpi=110)
    ax = fig.add_subplot(1, 2, 1)
    for name, pts in sorted(history.items()):
        if pts and "loss" in name:
            steps, vals = zip(*pts)
            ax.plot(steps, vals, label=name)
    ax.set_xlabel("step"), ax.set_ylabel("contrastive loss"), ax.grid(alpha=0.3), ax.legend()
    ax.set_title(title or "training loss")
    mean, std = torch.tensor(image_mean)[:, None, None], torch.tensor(image_std)[:, None, None]
    for i, ex in enumerate(examples):
        a = fig.add_subplot(n, 4, 4 * i + 3)
        img = (ex["image"] * std + mean).clamp(0, 1)  # (C, H, W) back to [0, 1]
        a.imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray")
        a.set_axis_off()
        a.set_title(f"true: {ex['truth']}", fontsize=8)
        t = fig.add_subplot(n, 4, 4 * i + 4)
        t.set_axis_off()
        lines = [f"{s:+.2f}  {txt}" for txt, s in ex["top"]]
        t.text(0, 0.5, "\n".join(lines), fontsize=7, va="center", family="monospace")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
