"""Backbone pretraining for the detector on the detection TRAIN split's source images only: a short classification
stage (mmfm's ClassifyTask, its one optimizer builder) on crops of single train-split digits and animals at the
canvases' object scales, then the classifier's weights copied into the detector's backbone.

    crops = SourceCrops(split_sources(cfg)["train"], n=..., side=32, scales=(20, 32))   # train sources only
    clf = source_classifier("vit", 20, vit=vit) | source_classifier("timm:resnet18", 20)
    ... fit ClassifyTask(clf) on crops ...
    init_from_classifier(detector, clf)     # the ViT / timm body of detector.backbone gets clf's weights

`SourceCrops` is also the train sources as a plain classification dataset (items (image, label)); its `ids` say
which source images it can show (the no-leak tests check them against the val/test splits).
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from .canvas import Sources, _resized
from .models import trunk_name

log = logging.getLogger(__name__)


class SourceCrops(Dataset):
    """Item i: one source image resized to a random side in `scales` and pasted at a random place on a black
    side x side crop, as (image (1, side, side) float in [-1, 1], label). Index -> seed (seed, i): the same crops
    every epoch and run; the source is drawn from `sources` only."""

    def __init__(self, sources: Sources, n: int, side: int = 32, scales: tuple[int, int] = (20, 32), seed: int = 0):
        lo, hi = scales
        if not 8 <= lo <= hi <= side:
            raise ValueError(f"scales={scales}: need 8 <= low <= high <= side={side}")
        if n < 1 or not len(sources.labels):
            raise ValueError(f"n={n} crops from {len(sources.labels)} sources: both must be positive")
        self.sources, self.n, self.side, self.scales, self.seed = sources, n, side, (lo, hi), seed

    def __len__(self) -> int:
        return self.n

    @property
    def ids(self) -> set:
        """The source ids any crop can show (every item draws from these)."""
        return set(self.sources.ids.tolist())

    def draw(self, i: int) -> tuple[np.ndarray, int, str]:
        """(crop (side, side) uint8, label, source id) of item i."""
        rng = np.random.default_rng((self.seed, 7, i))
        k = int(rng.integers(len(self.sources.labels)))
        s = int(rng.integers(self.scales[0], self.scales[1] + 1))
        crop = np.zeros((self.side, self.side), np.uint8)
        x0, y0 = rng.integers(0, self.side - s + 1, size=2)
        crop[y0:y0 + s, x0:x0 + s] = _resized(self.sources.images[k], s)
        return crop, int(self.sources.labels[k]), str(self.sources.ids[k])

    def __getitem__(self, i: int):
        crop, label, _ = self.draw(i)
        return torch.from_numpy(crop).float().div(127.5).sub(1.0).unsqueeze(0), label  # (1, side, side)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All items stacked: (images (n, 1, side, side), labels (n,)), for evaluation."""
        items = [self[i] for i in range(self.n)]
        return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def source_classifier(backbone: str, num_classes: int, vit=None, side: int = 32) -> nn.Module:
    """images (B, 1, side, side) -> logits (B, num_classes) on the detector's backbone architecture: the given
    mmfm ViT with a linear head on its pooled tokens, or mmfm's TimmNet ('timm:NAME', 1 channel, random init)."""
    if backbone == "vit":
        if vit is None:
            raise ValueError("backbone='vit' needs the ViT to pretrain (vit=...)")
        vit.head = nn.Linear(vit.config.dim, num_classes)
        return vit
    if not backbone.startswith("timm:"):
        raise ValueError(f"backbone={backbone!r}: use 'vit' or 'timm:NAME'")
    from ..registry import build_model

    return build_model(backbone, in_chans=1, num_classes=num_classes, img_size=side)


def init_from_classifier(detector: nn.Module, classifier: nn.Module) -> int:
    """Copy the classifier's backbone weights (its head left out) into detector.backbone (ViTPyramid's `vit` or
    TimmPyramid's `body`); every backbone tensor must be found. Returns the number of tensors copied."""
    target = detector.get_submodule(trunk_name(detector))
    source = classifier.body if hasattr(classifier, "body") else classifier
    state = {k: v for k, v in source.state_dict().items() if not k.startswith(("head.", "fc."))}
    missing, _unused = target.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"the classifier lacks {len(missing)} backbone tensors, e.g. {missing[:3]}")
    n = len(target.state_dict())
    log.info("detector backbone initialised from the pretrained classifier (%d tensors)", n)
    return n
