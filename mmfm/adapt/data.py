"""Tasks for fine-tuning: a MedMNIST-layout .npz (path or built dataset name) or the offline 28x28
sets, the training-label subset for label-efficiency runs, and images brought to a backbone's input."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.medical import NpzTask, load_npz
from ..data.sources import ANIMAL_NAMES, DIGIT_NAMES, load_animals, load_mnist5k, split_indices

# datasets built by scripts in datasets/ (name -> (file under data/, the command that builds it))
BUILT = {"brain_mri": ("data/brain_mri_patches.npz", "python datasets/brain_mri_patches.py")}
OFFLINE = {"digits": (load_mnist5k, DIGIT_NAMES), "animals": (load_animals, ANIMAL_NAMES)}


def offline_task(name: str, val_fraction: float = 0.1, seed: int = 0) -> NpzTask:
    """MNIST-5k or animals as a 3-split task: the held-out 20% by image index (split_indices, as the
    other recipes) is the test split; `val_fraction` of the rest is the validation split."""
    loader, names = OFFLINE[name]
    x, y = loader()
    train_idx, test_idx = split_indices(len(x), 0.2, seed)
    fit_idx, val_idx = (train_idx[i] for i in split_indices(len(train_idx), val_fraction, seed + 1))
    pick = {"train": fit_idx, "val": val_idx, "test": test_idx}
    return NpzTask({s: x[i] for s, i in pick.items()}, {s: y[i][:, None] for s, i in pick.items()},
                   "multiclass", list(names), name)


def load_task(data: str | os.PathLike, root: str | os.PathLike = ".") -> NpzTask:
    """`data`: a .npz path, a built dataset name (BUILT) or an offline set (digits, animals)."""
    text = os.fspath(data)
    if text in OFFLINE:
        return offline_task(text)
    if text in BUILT:
        rel, command = BUILT[text]
        path = Path(root) / rel
        if not path.is_file():
            raise FileNotFoundError(f"--data {text}: {path} is missing; build it with: {command}")
        return load_npz(path)
    if text.endswith(".npz") or Path(text).is_file():
        return load_npz(text)
    raise ValueError(f"--data {text!r}: give a .npz path or one of {sorted(BUILT) + sorted(OFFLINE)}")


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
    """uint8 (N, H, W[, C]) -> float (N, C', img_size, img_size), normalised; RGB is averaged to grey
    for a 1-channel backbone (a grey image for a 3-channel one is repeated by the ViT itself)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0
    x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W)
    if x.shape[1] == 3 and in_chans == 1:
        x = x.mean(1, keepdim=True)  # (N, 1, H, W)
    if x.shape[-1] != img_size or x.shape[-2] != img_size:
        x = F.interpolate(x, size=(img_size, img_size), mode="bilinear", antialias=True, align_corners=False)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    if m.shape[1] != x.shape[1] and m.shape[1] > 1:  # grey input, per-channel stats: use their mean
        m, s = m.mean(1, keepdim=True), s.mean(1, keepdim=True)
    return (x - m) / s
