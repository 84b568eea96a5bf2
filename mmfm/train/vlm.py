"""Training and evaluating a VLM on question/answer pairs: the collate (loss on the answer only), a thin
LightningModule, greedy answering, VQA accuracy per question type, and a PNG grid of answered test images.

A sequence is `question + " " + answer + <eos>`; the image enters through the model (prefix or cross fusion).
`blind=True` trains and evaluates the same model on a constant blank image: the question-only control.
"""
from __future__ import annotations

import string
from collections import defaultdict
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from ..tokenizers import CharTokenizer
from .optim import adamw_warmup_cosine
from .strategies import ShardedTask

IGNORE = -100


def vqa_tokenizer(kind: str = "char", texts=None, vocab_size: int = 512):
    """kind="char": characters of every question and answer (lowercase letters, digits, space, '?', '-').
    kind="bpe": a byte-level BPE trained on `texts` (the training split's questions and answers), so that each
    word of this closed vocabulary becomes about one token; unseen words still encode, byte by byte."""
    if kind == "char":
        return CharTokenizer(string.ascii_lowercase + string.digits + " ?-")
    if kind != "bpe":
        raise ValueError(f"tokenizer={kind!r}: choose 'char' or 'bpe'")
    if not texts:
        raise ValueError("tokenizer='bpe' is trained on the training questions and answers: pass them as texts")
    from ..tokenizers import ByteBPETokenizer

    return ByteBPETokenizer.train(texts, vocab_size=vocab_size, min_frequency=1)


class QACollate:
    """[VQAExample] -> {"images" (B, 1, H, W) uint8, "ids" (B, T), "targets" (B, T) (IGNORE but on the answer and
    <eos>), "mask" (B, T) True on real tokens}; right-padded with the tokenizer's pad id."""

    def __init__(self, tok: CharTokenizer, block: int):
        self.tok, self.block = tok, block

    def __call__(self, examples) -> dict:
        rows, answer_from = [], []
        for ex in examples:
            prompt = self.tok.encode(ex.question + " ")
            rows.append(prompt + self.tok.encode(ex.answer) + [self.tok.eos_id])
            answer_from.append(len(prompt))
        width = max(len(r) for r in rows) - 1  # inputs drop the last token, targets the first
        if width > self.block:
            raise ValueError(f"a question and answer take {width} tokens; the model's text room is {self.block}")
        ids = torch.full((len(rows), width), self.tok.pad_id, dtype=torch.long)
        targets = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        for i, (r, a) in enumerate(zip(rows, answer_from)):
            seq = torch.tensor(r)
            ids[i, :len(r) - 1] = seq[:-1]
            targets[i, a - 1:len(r) - 1] = seq[a:]  # predict the answer and <eos> only
        mask = torch.arange(width)[None] < torch.tensor([len(r) - 1 for r in rows])[:, None]  # (B, T)
        return {"images": torch.stack([ex.image for ex in examples]), "ids": ids, "targets": targets, "mask": mask}


def cell_classification_set(src, size: int) -> torch.utils.data.TensorDataset:
    """The source images of one VQA split as a classification set for pre-training the image tower: (images
    (N, 1, size, size) float in [-1, 1], the ViT's space for uint8 pixels; labels (N,) in 0..19, digits then
    animals). Resized when the tower's tile is not 28 pixels."""
    from .classify import to_model_space

    images = to_model_space(src.images)  # (N, 1, 28, 28)
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return torch.utils.data.TensorDataset(images, torch.from_numpy(src.labels).long())


def blank_like(images: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(images)


class VLMTask(ShardedTask, L.LightningModule):
    """Next-token cross-entropy on the answer tokens of `model(images, ids)`; AdamW, warmup and cosine."""

    def __init__(self, model, lr: float = 1e-3, weight_decay: float = 0.05, warmup_steps: int = 50,
                 total_steps: int = 1000, blind: bool = False):
        super().__init__()
        self.model, self.blind = model, blind
        self.lr, self.weight_decay, self.warmup_steps, self.total_steps = lr, weight_decay, warmup_steps, total_steps

    def training_step(self, batch, _):
        images = blank_like(batch["images"]) if self.blind else batch["images"]
        logits = self.model(images, batch["ids"], key_padding_mask=batch["mask"])  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return adamw_warmup_cosine(self.model, self.lr, self.weight_decay, self.warmup_steps, self.total_steps, 0.05,
                                   self._trainer)


@torch.no_grad()
def answer(model, tok: CharTokenizer, images: torch.Tensor, questions: list[str], max_len: int = 16) -> list[str]:
    """Greedy answers, one per (image, question). Prompts are right-padded; each row reads its next token at its
    own end (the model is causal, so the padding after a row's end does not change it)."""
    device = next(model.parameters()).device
    prompts = [tok.encode(q + " ") for q in questions]
    ends = torch.tensor([len(p) for p in prompts], device=device)
    ids = torch.full((len(prompts), int(ends.max()) + max_len), tok.pad_id, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = torch.tensor(p, device=device)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    rows = torch.arange(len(prompts), device=device)
    images = images.to(device)
    steps = 0
    for step in range(max_len):
        steps = step + 1
        width = int(ends.max()) + step
        logits = model(images, ids[:, :width])  # (B, width, V)
        nxt = logits[rows, ends + step - 1].argmax(-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, tok.eos_id), nxt)
        ids[rows, ends + step] = nxt
        done |= nxt == tok.eos_id
        if done.all():
            break
    out = []
    for i, e in enumerate(ends.tolist()):
        row = ids[i, e:e + steps].tolist()
        out.append(tok.decode(row[:row.index(tok.eos_id)] if tok.eos_id in row else row))
    return out


def evaluate_vqa(model, tok: CharTokenizer, dataset, blind: bool = False, batch_size: int = 256,
                 keep: int = 0) -> tuple[dict, list]:
    """({"vqa_accuracy": exact match over `dataset`, "vqa_accuracy/<type>": ...}, the first `keep` examples as
    (example, predicted answer))."""
    was_training = model.training
    model.eval()
    hits, shown = defaultdict(list), []
    for start in range(0, len(dataset), batch_size):
        batch = [dataset[j] for j in range(start, min(start + batch_size, len(dataset)))]
        images = torch.stack([ex.image for ex in batch])
        preds = answer(model, tok, blank_like(images) if blind else images, [ex.question for ex in batch])
        for ex, pred in zip(batch, preds):
            hits[ex.type].append(pred.strip() == ex.answer)
            if len(shown) < keep:
                shown.append((ex, pred))
    model.train(was_training)
    every = [h for v in hits.values() for h in v]
    metrics = {"vqa_accuracy": sum(every) / len(every)}
    metrics.update({f"vqa_accuracy/{k}": sum(v) / len(v) for k, v in sorted(hits.items())})
    return metrics, shown


def titled_grid(panels: list, path: str | Path, cols: int = 4, size: tuple[float, float] = (3.2, 3.6)) -> Path:
    """A PNG of uint8 images (C, H, W; the first channel shown), each with its title and title colour:
    panels = [(image, title, colour), ...]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, title, colour) in zip(axes.flat, panels):
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=8, color=colour)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def answer_grid(shown: list, path: str | Path, cols: int = 4) -> Path:
    """A PNG of test canvases, each titled with its question, the true answer and the model's."""
    return titled_grid([(ex.image, f"{ex.question}\ntrue: {ex.answer}\nmodel: {pred}",
                         "green" if pred.strip() == ex.answer else "red") for ex, pred in shown], path, cols)
