"""Tasks for fine-tuning (read by mmfm.data.labelled: a user's ImageFolder, CSV, .npz, DICOM/NIfTI folder, or a
built-in set), the training-label subset for label-efficiency runs, and images brought to a backbone's input."""
from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from ..data.labelled import BUILT, OFFLINE, load_labelled, offline_task  # noqa: F401 (re-exported)
from ..data.medical import NpzTask


def load_task(data: str | os.PathLike, root: str | os.PathLike = ".", **kw) -> NpzTask:
    """`data`: any labelled-image path mmfm.data.labelled reads (ImageFolder, CSV of path,label, MedMNIST .npz,
    DICOM/NIfTI folder with labels.csv) or a built-in name (digits, animals, brain_mri); `kw`: val_data,
    test_data, size, val_fraction, test_fraction, seed, max_bad_fraction (see load_labelled)."""
    return load_labelled(data, root, **kw)


def label_subset(targets: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Indices of a `fraction` of the training labels, stratified per class (at least one of each)
    for single-label targets (N,), uniformly at random for multi-label (N, L)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    n = len(targets)
    if fraction == 1:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    if targets.dim() > 1:
        return torch.randperm(n, generator=g)[: max(1, round(fraction * n))].sort().values
    keep = []
    for c in targets.unique():
        idx = (targets == c).nonzero()[:, 0]
        keep.append(idx[torch.randperm(len(idx), generator=g)[: max(1, round(fraction * len(idx)))]])
    return torch.cat(keep).sort().values


def pixel_stats(cfg) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) a backbone's config expects for pixels in [0, 1]: a CLIP config's image_mean/std,
    else (0.5, 0.5), i.e. pixels in [-1, 1] as mmfm's ViT classifier is trained."""
    return tuple(getattr(cfg, "image_mean", (0.5,))), tuple(getattr(cfg, "image_std", (0.5,)))


def to_backbone_input(images: np.ndarray, img_size: int, in_chans: int, mean, std) -> torch.Tensor:
    """uint8 (N, H, W[, C]) / 255, or float in [0, 1] as it is (mmfm.data.labelled.PixelScale brings other values
    there) -> float (N, C', img_size, img_size), normalised; RGB is averaged to grey for a 1-channel backbone (a
    grey image for a 3-channel one is repeated by the ViT itself)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float()
    if images.dtype == np.uint8:
        x = x / 255.0
    elif x.numel() and (x.min() < 0 or x.max() > 1 or not images.dtype.kind == "f"):
        raise ValueError(f"images: {images.dtype} values in [{x.min().item():g}, {x.max().item():g}]; expected uint8 "
                         "or float in [0, 1] (mmfm.data.labelled.PixelScale scales other values)")
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W)
    if x.shape[1] == 3 and in_chans == 1:
        x = x.mean(1, keepdim=True)  # (N, 1, H, W)
    if x.shape[-1] != img_size or x.shape[-2] != img_size:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    if m.shape[1] != x.shape[1] and m.shape[1] > 1:  # grey input, per-channel stats: use their mean
        m, s = m.mean(1, keepdim=True), s.mean(1, keepdim=True)
    return (x - m) / s
