"""Task heads on mmfm image backbones: any ViT, a CLIP's image tower (`clip.visual`), or a timm network
(`timm:resnet18`, mmfm/models/timm_net.py).

The adapted model stays a plain mmfm model (ViT or TimmNet) whose `head` is a Linear and whose
`config.num_classes` is the head's width, so `save_pretrained` writes a normal folder that `build_model` loads.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn as nn

from ..models.clip import CLIP
from ..models.vit import ViT
from ..registry import build_model, get_config, model_class, read_config

log = logging.getLogger(__name__)


def image_backbone(model: nn.Module) -> nn.Module:
    """The network that turns images into features: the model itself (a ViT or a timm network), or CLIP's
    `visual` tower."""
    if isinstance(model, ViT) or getattr(model.config, "family", "") == "timm":
        return model
    if isinstance(model, CLIP):
        return model.visual
    raise TypeError(f"no image backbone in a {type(model).__name__}; use a ViT or CLIP preset or folder, or timm:NAME")


def source_config(init: str | os.PathLike, **overrides):
    """The config of a preset or saved folder (a ViTConfig or CLIPConfig), with overrides."""
    path = os.fspath(init)
    cfg = read_config(Path(path)) if (Path(path) / "config.json").is_file() else get_config(path)
    return cfg.replace(**overrides) if overrides else cfg


def load_backbone(init: str | os.PathLike, from_scratch: bool = False, **overrides) -> ViT:
    """The image backbone of a preset or saved folder; `from_scratch` builds the same architecture
    with freshly initialised weights (the baseline a pretrained backbone must beat)."""
    if not from_scratch:
        size = overrides.pop("img_size", None) if (Path(init) / "config.json").is_file() else None
        vit = image_backbone(build_model(init, **overrides))
        return vit if size is None else resize_input(vit, size)
    cfg = source_config(init, **overrides)
    return image_backbone(model_class(cfg.family)(cfg))


def resize_input(vit: ViT, img_size: int) -> ViT:
    """A loaded ViT set to a new input size, in place: its position table resampled (bicubic) to the new grid,
    as the forward pass does for other sizes, so `config.img_size` and the saved folder agree."""
    if img_size == vit.config.img_size:
        return vit
    cfg = vit.config.replace(img_size=img_size)  # checks divisibility by the patch size
    with torch.no_grad():
        pos = vit._pos(cfg.grid, cfg.grid)  # (1, n_prefix + grid * grid, dim)
    vit.pos_embed = nn.Parameter(pos.clone(), requires_grad=vit.pos_embed.requires_grad)
    log.info("backbone input %d -> %d px: position table resampled to a %dx%d grid", vit.config.img_size,
             img_size, cfg.grid, cfg.grid)
    vit.config = cfg
    return vit


def attach_head(vit: nn.Module, n_outputs: int) -> nn.Module:
    """Replace the backbone's head by a fresh zero-initialised Linear(features, n_outputs), in place."""
    features = getattr(vit, "num_features", None) or vit.config.dim
    vit.config = vit.config.replace(num_classes=n_outputs)
    vit.head = nn.Linear(features, n_outputs)
    nn.init.zeros_(vit.head.weight)
    nn.init.zeros_(vit.head.bias)
    return vit
