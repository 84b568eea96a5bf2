"""Detectors: torchvision's FCOS (its box matching, losses and NMS) on a custom backbone:

- `vit`: an mmfm ViT with a ViTDet-style simple feature pyramid built from its LAST block's patch tokens (deconv for
  finer levels, identity, max-pool for coarser; each then 1x1 conv + LayerNorm + 3x3 conv + LayerNorm);
- `timm:NAME` (e.g. timm:resnet18): a timm CNN with `features_only=True` and torchvision's FeaturePyramidNetwork.

Both return an OrderedDict of feature maps with `out_channels` channels at the config's `strides`.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d

from ..config import opt
from ..explain.maps import tokens_to_grid
from ..models.vit import ViT, ViTConfig

@dataclass
class DetectorConfig:
    backbone: str = "vit"  # vit (the ViT given to build_detector), or timm:NAME (a timm CNN with features_only)
    num_classes: int = opt(20, lo=1)
    img_size: int = opt(96, lo=16)  # canvas side; the detector's transform keeps it (min_size = max_size)
    in_chans: int = opt(1, lo=1)
    channels: int = opt(128, lo=32)  # pyramid and head width (a multiple of 32: the heads' GroupNorm(32))
    head_convs: int = opt(2, lo=1)  # conv layers per head branch (torchvision's default is 4)
    strides: tuple[int, ...] = (8, 16, 32)  # pyramid levels, in pixels
    score_thresh: float = opt(0.05, lo=0.0, hi=1.0)  # detections kept for evaluation
    nms_thresh: float = opt(0.5, gt=0.0, hi=1.0)
    detections_per_img: int = opt(50, lo=1)

    def __post_init__(self):
        if self.channels % 32:
            raise ValueError(f"channels={self.channels} must be a multiple of 32 (the heads' GroupNorm(32, C))")
        if self.backbone != "vit" and not self.backbone.startswith("timm:"):
            raise ValueError(f"backbone={self.backbone!r}: use 'vit' or 'timm:NAME' (e.g. timm:resnet18)")
        if any(s <= 0 or s & (s - 1) for s in self.strides) or list(self.strides) != sorted(set(self.strides)):
            raise ValueError(f"strides={self.strides}: increasing powers of two, e.g. (8, 16, 32)")


def _level(dim: int, out: int, scale: float) -> nn.Sequential:
    """One ViTDet pyramid level from a (B, dim, h, w) map: resample by `scale` (a power of two), then project."""
    layers, width = [], dim
    if scale > 1:
        for _ in range(int(math.log2(scale))):
            layers += [nn.ConvTranspose2d(width, width // 2, 2, stride=2), LayerNorm2d(width // 2), nn.GELU()]
            width //= 2
        layers = layers[:-2]  # no norm/activation after the last deconv (ViTDet)
    elif scale < 1:
        layers += [nn.MaxPool2d(int(1 / scale))]
    layers += [nn.Conv2d(width, out, 1, bias=False), LayerNorm2d(out),
               nn.Conv2d(out, out, 3, padding=1, bias=False), LayerNorm2d(out)]
    return nn.Sequential(*layers)


class ViTPyramid(nn.Module):
    """An mmfm ViT (pooling head unused) -> {str(stride): (B, out_channels, H / stride, W / stride)} from its last
    block's patch tokens."""

    def __init__(self, cfg: DetectorConfig, vit: ViT):
        super().__init__()
        if vit.config.in_chans != cfg.in_chans:
            raise ValueError(f"the ViT takes {vit.config.in_chans} channel(s), the detector {cfg.in_chans}")
        self.vit = vit
        self.vit.head = nn.Identity()
        p, dim = self.vit.config.patch_size, self.vit.config.dim
        self.strides = tuple(cfg.strides)
        self.levels = nn.ModuleList([_level(dim, cfg.channels, p / s) for s in self.strides])
        self.out_channels = cfg.channels

    def forward(self, images: torch.Tensor) -> OrderedDict:
        tokens = self.vit.forward_features(images)  # (B, n_prefix + h * w, D)
        p = self.vit.config.patch_size
        h, w = images.shape[-2] // p, images.shape[-1] // p
        grid = tokens_to_grid(tokens, h, w)  # (B, D, h, w)
        return OrderedDict((str(s), level(grid)) for s, level in zip(self.strides, self.levels))


class TimmPyramid(nn.Module):
    """A timm CNN (features_only, the levels at `strides`) + torchvision's FeaturePyramidNetwork."""

    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        import timm
        from torchvision.ops import FeaturePyramidNetwork

        arch = cfg.backbone[len("timm:"):]
        probe = timm.create_model(arch, pretrained=False, features_only=True, in_chans=cfg.in_chans)
        reductions = probe.feature_info.reduction()
        missing = [s for s in cfg.strides if s not in reductions]
        if missing:
            raise ValueError(f"backbone={cfg.backbone!r} has feature levels at strides {reductions}, not {missing}")
        idx = tuple(reductions.index(s) for s in cfg.strides)
        self.body = timm.create_model(arch, pretrained=False, features_only=True, in_chans=cfg.in_chans,
                                      out_indices=idx)
        self.fpn = FeaturePyramidNetwork(self.body.feature_info.channels(), cfg.channels)
        self.strides, self.out_channels = tuple(cfg.strides), cfg.channels

    def forward(self, images: torch.Tensor) -> OrderedDict:
        feats = self.body(images)
        return self.fpn(OrderedDict((str(s), f) for s, f in zip(self.strides, feats)))


def trunk_name(detector: nn.Module) -> str:
    """The path of the detector's pretrainable trunk (the part `init_from_classifier` fills, without the pyramid
    and head): "backbone.vit" for ViTPyramid, "backbone.body" for TimmPyramid."""
    return "backbone.vit" if isinstance(detector.backbone, ViTPyramid) else "backbone.body"


def default_vit(cfg: DetectorConfig, **overrides) -> ViT:
    """A ViT for the canvases: 8-px patches (a 12x12 grid on 96 px), width 128, 4 blocks, 4 heads."""
    base = dict(img_size=cfg.img_size, patch_size=8, in_chans=cfg.in_chans, dim=128, depth=4, n_heads=4,
                num_classes=0)
    return ViT(ViTConfig(**{**base, **overrides}))


def build_detector(cfg: DetectorConfig, vit: ViT | None = None) -> nn.Module:
    """torchvision's FCOS on the config's backbone; pixels normalised to [-1, 1] by its transform, which keeps the
    canvas size (min_size = max_size = img_size)."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.fcos import FCOSHead

    if cfg.backbone == "vit":
        backbone = ViTPyramid(cfg, vit if vit is not None else default_vit(cfg))
    elif vit is not None:
        raise ValueError(f"a ViT was given for backbone={cfg.backbone!r}; it is used only with backbone='vit'")
    else:
        backbone = TimmPyramid(cfg)
    common = dict(min_size=cfg.img_size, max_size=cfg.img_size, image_mean=[0.5] * cfg.in_chans,
                  image_std=[0.5] * cfg.in_chans, score_thresh=cfg.score_thresh, nms_thresh=cfg.nms_thresh,
                  detections_per_img=cfg.detections_per_img)
    # one anchor per location, its size = the level's stride (FCOS's centre sampling and scale ranges use it)
    anchors = AnchorGenerator(tuple((s,) for s in cfg.strides), ((1.0,),) * len(cfg.strides))
    head = FCOSHead(cfg.channels, 1, cfg.num_classes, num_convs=cfg.head_convs)
    return FCOS(backbone, cfg.num_classes, anchor_generator=anchors, head=head, **common)


def save_detector(model: nn.Module, cfg: DetectorConfig, folder) -> Path:
    """<folder>/detector.json (the DetectorConfig, and the ViT's config for backbone 'vit') + model.safetensors."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"detector": dataclasses.asdict(cfg)}
    if cfg.backbone == "vit":
        meta["vit"] = model.backbone.vit.config.to_dict()
    (folder / "detector.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def load_detector(folder) -> tuple[nn.Module, DetectorConfig]:
    """The detector `save_detector` wrote, in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = json.loads((folder / "detector.json").read_text(encoding="utf-8"))
    d = meta["detector"]
    cfg = DetectorConfig(**{**d, "strides": tuple(d["strides"])})
    vit = ViT(ViTConfig.from_dict(meta["vit"])) if "vit" in meta else None
    model = build_detector(cfg, vit)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval(), cfg
