"""Supervised image classification: a thin LightningModule over any `model(images) -> logits`, plus the
labelled 28x28 data (MNIST-5k digits, animal silhouettes) shared by the ViT classifier and the DiT recipes."""
from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from ..data.sources import ANIMAL_NAMES, DIGIT_NAMES, load_animals, load_mnist5k, split_indices
from .optim import adamw_warmup_cosine
from .strategies import ShardedTask

DATASETS = {"digits": (load_mnist5k, DIGIT_NAMES), "animals": (load_animals, ANIMAL_NAMES)}


@dataclass
class LabelledImages:
    """Images in model space (N, 1, 28, 28) float in [-1, 1], global labels (N,), the dataset of each image
    (N,) as an index into `datasets`, and the global class names (dataset classes stacked in order)."""

    images: torch.Tensor
    labels: torch.Tensor
    source: torch.Tensor
    datasets: tuple[str, ...]
    class_names: list[str]

    def subset(self, idx) -> "LabelledImages":
        return LabelledImages(self.images[idx], self.labels[idx], self.source[idx], self.datasets, self.class_names)

    def of(self, dataset: str) -> "LabelledImages":
        return self.subset(self.source == self.datasets.index(dataset))


def to_model_space(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 1, H, W) in [-1, 1] (the space of the classifier and the diffusion model)."""
    return torch.from_numpy(images_u8).float().div(127.5).sub(1.0).unsqueeze(1)  # (N, 1, H, W)


def load_labelled(datasets=("digits", "animals"), split: str = "train", test_fraction: float = 0.2,
                  seed: int = 0, limit: int | None = None) -> LabelledImages:
    """The held-out split is by image index (mmfm.data.sources.split_indices, fixed seed), so every recipe
    that uses the same datasets sees the same test images. Labels are offset per dataset: digits 0-9, animals 10-19."""
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be train, test or all, got {split!r}")
    images, labels, source, names = [], [], [], []
    for k, name in enumerate(datasets):
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
        loader, class_names = DATASETS[name]
        x, y = loader()
        if split != "all":
            idx = split_indices(len(x), test_fraction, seed)[0 if split == "train" else 1]
            x, y = x[idx], y[idx]
        if limit is not None:  # a seeded random subset (the sources are ordered by label)
            keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:limit])
            x, y = x[keep], y[keep]
        images.append(to_model_space(x))
        labels.append(torch.from_numpy(y) + len(names))
        source.append(torch.full((len(x),), k, dtype=torch.long))
        names += list(class_names)
    return LabelledImages(torch.cat(images), torch.cat(labels), torch.cat(source), tuple(datasets), names)


def random_shift(images: torch.Tensor, max_shift: int = 2, max_rot_deg: float = 10.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image random translation (pixels) and rotation, background = -1. (B, C, H, W) -> same shape."""
    B, _, H, _ = images.shape
    ang = (torch.rand(B, generator=generator) * 2 - 1) * math.radians(max_rot_deg)
    shift = (torch.rand(B, 2, generator=generator) * 2 - 1) * (2 * max_shift / H)
    cos, sin = ang.cos(), ang.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    return F.grid_sample(images + 1, grid, align_corners=False, padding_mode="zeros") - 1


@torch.no_grad()
def predict(model, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of `model` over `images` in batches, in eval mode (the mode is restored after)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.cat([model(images[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(images), batch_size)])
    model.train(was_training)
    return out


def accuracy_per_dataset(model, data: LabelledImages) -> dict[str, float]:
    """{'accuracy/<dataset>': top-1 accuracy among all classes, ..., 'accuracy/all': over every image}."""
    pred = predict(model, data.images).argmax(-1)
    hit = (pred == data.labels).float()
    out = {f"accuracy/{name}": hit[data.source == k].mean().item() for k, name in enumerate(data.datasets)}
    out["accuracy/all"] = hit.mean().item()
    return out


class ClassifyTask(ShardedTask, L.LightningModule):
    """Cross-entropy on `model(images)`; AdamW with linear warmup and cosine decay; optional augmentation.
    Batches are (images, labels) or (images, labels, ...)."""

    def __init__(self, model, lr: float = 1e-3, weight_decay: float = 0.05, warmup_steps: int = 50,
                 total_steps: int = 1000, label_smoothing: float = 0.0, augment: bool = False):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.warmup_steps, self.total_steps = lr, weight_decay, warmup_steps, total_steps
        self.label_smoothing, self.augment = label_smoothing, augment

    def training_step(self, batch, _):
        images, labels = batch[0], batch[1]
        if self.augment:
            images = random_shift(images)
        loss = F.cross_entropy(self.model(images), labels, label_smoothing=self.label_smoothing)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, _):
        images, labels = batch[0], batch[1]
        logits = self.model(images)
        self.log("val/loss", F.cross_entropy(logits, labels))
        self.log("val/accuracy", (logits.argmax(-1) == labels).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return adamw_warmup_cosine(self.model, self.lr, self.weight_decay, self.warmup_steps, self.total_steps, 0.05,
                                   self._trainer)
