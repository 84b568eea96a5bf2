"""Deletion curves (Petsiuk et al. 2018, at patch level): accuracy as the most-attributed patches of each image are
replaced by a baseline value, against the same number of patches removed at random. A faithful map makes accuracy
fall faster than random removal (a lower area under the curve)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..train.classify import predict


def patch_order(maps: torch.Tensor, patch: int, generator=None, random: bool = False) -> torch.Tensor:
    """(B, H, W) maps -> (B, n_patches) patch indices, most attributed first, ties (an all-zero Grad-CAM map)
    in random order; `random`: a random order regardless of the map."""
    scores = F.avg_pool2d(maps[:, None].float(), patch)[:, 0].flatten(1)  # (B, n_patches)
    perms = torch.stack([torch.randperm(scores.shape[1], generator=generator) for _ in range(len(scores))])
    if random:
        return perms
    ranked = scores.gather(1, perms).argsort(dim=1, descending=True, stable=True)  # ties keep the random order
    return perms.gather(1, ranked)


def delete_patches(images: torch.Tensor, order: torch.Tensor, k: int, patch: int, baseline: float) -> torch.Tensor:
    """Copies of `images` (B, C, H, W) with the first k patches of each `order` row set to `baseline`."""
    B, C, H, W = images.shape
    keep = torch.ones(B, (H // patch) * (W // patch))
    keep.scatter_(1, order[:, :k], 0.0)
    mask = keep.view(B, 1, H // patch, W // patch)  # (B, 1, h, w)
    mask = F.interpolate(mask, scale_factor=patch, mode="nearest")  # (B, 1, H, W)
    return images * mask + baseline * (1 - mask)


def _accuracy(model, images, targets, kind) -> float:
    logits = predict(model, images)
    pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
    return (pred == targets.view(-1)).float().mean().item()


def deletion_curve(model, images: torch.Tensor, targets: torch.Tensor, maps: torch.Tensor, patch: int,
                   steps: int = 8, baseline: float = 0.0, seed: int = 0, kind: str = "multiclass") -> dict:
    """{"fraction": [...], "attributed": [accuracy ...], "random": [...], "auc_attributed", "auc_random"}:
    accuracy after removing 0, 1/steps, ..., all patches in attribution order and in random order (trapezoid area
    over the removed fraction). `baseline`: the value removed patches get (0 = mid-grey in [-1, 1] pixels)."""
    if kind not in ("multiclass", "binary"):
        raise ValueError(f"deletion curves score accuracy of single-label tasks, not {kind}")
    H, W = images.shape[-2:]
    if H % patch or W % patch:
        raise ValueError(f"patch={patch} must divide the image size {H}x{W}")
    n = (H // patch) * (W // patch)
    ranked = patch_order(maps, patch, torch.Generator().manual_seed(seed + 1))
    shuffled = patch_order(maps, patch, torch.Generator().manual_seed(seed), random=True)
    fractions = [i / steps for i in range(steps + 1)]
    curves = {"attributed": [], "random": []}
    for f in fractions:
        k = round(f * n)
        for name, order in (("attributed", ranked), ("random", shuffled)):
            curves[name].append(_accuracy(model, delete_patches(images, order, k, patch, baseline), targets, kind))
    auc = {f"auc_{k}": float(torch.trapezoid(torch.tensor(v), torch.tensor(fractions))) for k, v in curves.items()}
    return {"fraction": fractions, **curves, **auc}


def plot_curves(curves: dict[str, dict], path, title: str = ""):
    """Accuracy against the removed fraction: each method's attributed order (solid) and random order (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, (name, c) in enumerate(curves.items()):
        color = f"C{i}"
        ax.plot(c["fraction"], c["attributed"], color=color, label=f"{name} order (AUC {c['auc_attributed']:.3f})")
        ax.plot(c["fraction"], c["random"], color=color, ls="--", label=f"random order (AUC {c['auc_random']:.3f})")
    ax.set_xlabel("fraction of patches removed")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    from .overlay import save_figure

    return save_figure(fig, path)


def main(argv=None):
    """python -m mmfm.explain.faithfulness MODEL_DIR --data brain_mri [--n 1000] [--steps 8] --out DIR"""
    import argparse
    import json
    import logging
    from pathlib import Path

    from .. import build_model
    from ..adapt.data import load_task, pixel_stats, to_backbone_input
    from ..models.vit import ViT
    from .maps import explain

    p = argparse.ArgumentParser(prog="python -m mmfm.explain.faithfulness", description=__doc__.splitlines()[0])
    p.add_argument("model", help="a saved classifier folder (recipes/finetune.py's <out>/model)")
    p.add_argument("--data", default="brain_mri", help="the labelled data it was fine-tuned on (its test split)")
    p.add_argument("--n", type=int, default=1000, help="test images (a fixed random subset of the split, by --seed)")
    p.add_argument("--steps", type=int, default=8, help="points on the curve after 0 removed")
    p.add_argument("--patch", type=int, default=0, help="removed square's side in pixels (0: the ViT's patch, "
                   "else 4)")
    p.add_argument("--baseline", type=float, default=0.0, help="removed pixels' value after normalisation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/explain/faithfulness")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = build_model(a.model).eval()
    cfg = model.config
    task = load_task(a.data, size=cfg.img_size, seed=a.seed)
    if task.kind not in ("multiclass", "binary"):
        p.error(f"--data {a.data}: a {task.kind} task; deletion curves need single-label accuracy")
    pick = torch.randperm(len(task.images["test"]), generator=torch.Generator().manual_seed(a.seed))[: a.n].sort().values
    x = to_backbone_input(task.images["test"][pick.numpy()], cfg.img_size, cfg.in_chans, *pixel_stats(cfg))
    y = task.targets("test")[pick]
    patch = a.patch or (cfg.patch_size if isinstance(model, ViT) else 4)
    methods = ("gradcam", "rollout") if isinstance(model, ViT) else ("gradcam",)
    curves = {}
    for method in methods:
        maps = torch.cat([explain(model, x[i:i + 256], method) for i in range(0, len(x), 256)])
        curves[method] = deletion_curve(model, x, y, maps, patch, a.steps, a.baseline, a.seed, task.kind)
        logging.info("%s: attributed %s, random %s", method, curves[method]["auc_attributed"],
                     curves[method]["auc_random"])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": a.model, "data": a.data, "n": len(y), "patch": patch, "baseline": a.baseline}
    (out / "deletion.json").write_text(json.dumps({**meta, **curves}, indent=2), encoding="utf-8")
    plot_curves(curves, out / "deletion.png", f"deletion curves: {Path(a.model).parent.name} on {a.data} test")
    return curves


if __name__ == "__main__":
    main()
