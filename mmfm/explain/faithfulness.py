"""Deletion curves (Petsiuk et al. 2018, at patch level): accuracy as the most-attributed patches of each image are
replaced by a baseline value, against the same number of patches removed at random. A faithful map makes accuracy
fall faster than random removal (a lower area under the curve)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..train.classify import predict


def patch_order(maps: torch.Tensor, patch: int, generator=None) -> torch.Tensor:
    """(B, H, W) maps -> (B, n_patches) patch indices, most attributed first (random when generator is given)."""
    scores = F.avg_pool2d(maps[:, None].float(), patch)[:, 0].flatten(1)  # (B, n_patches)
    if generator is not None:
        return torch.stack([torch.randperm(scores.shape[1], generator=generator) for _ in range(len(scores))])
    return scores.argsort(1, descending=True)


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
    ranked = patch_order(maps, patch)
    shuffled = patch_order(maps, patch, torch.Generator().manual_seed(seed))
    fractions = [i / steps for i in range(steps + 1)]
    curves = {"attributed": [], "random": []}
    for f in fractions:
        k = round(f * n)
        for name, order in (("attributed", ranked), ("random", shuffled)):
            curves[name].append(_accuracy(model, delete_patches(images, order, k, patch, baseline), targets, kind))
    auc = {f"auc_{k}": float(torch.trapezoid(torch.tensor(v), torch.tensor(fractions))) for k, v in curves.items()}
    return {"fraction": fractions, **curves, **auc}
