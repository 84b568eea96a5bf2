"""UNETR (Hatamizadeh et al. 2022) in 2-D or 3-D on an mmfm ViT: patch tokens from several blocks become skip features
through MONAI's UnetrPrUpBlock (transposed-conv upsampling), the last block's tokens are decoded with MONAI's
UnetrUpBlock chain, the image itself feeds a UnetrBasicBlock, and UnetOutBlock gives per-pixel logits.

With a patch size of 2^k the decoder has k up-steps; skip s (s = 1 .. k-1, at 1/2^s resolution) comes from block
`taps[s - 1]`, the bottleneck from the last block (taps default to evenly spaced blocks, as UNETR's 3/6/9/12).
The spatial dimension is the ViT's (`ViTConfig.spatial_dims`): 3 gives a volumetric UNETR on a ViT with a 3-D
patch embedding, the same MONAI blocks with spatial_dims=3.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ..config import opt
from ..explain.maps import tokens_to_grid
from ..models.vit import ViT, ViTConfig


@dataclass
class UNETRConfig:
    num_classes: int = opt(2, lo=2)
    feature_size: int = opt(16, lo=1)  # channels at full resolution; x2 per level down (MONAI's UNETR default)
    taps: tuple[int, ...] = ()  # ViT blocks (1-based) giving the skips, finest first; () = evenly spaced
    norm_name: str = "instance"
    res_block: bool = True
    vit: dict = field(default_factory=dict)  # the ViTConfig as a dict (to_dict), filled by build_unetr


def _default_taps(depth: int, k: int) -> tuple[int, ...]:
    """k - 1 skip blocks evenly spaced in 1..depth-1 (UNETR's 3, 6, 9 of 12 for k = 4)."""
    return tuple(max(1, round(depth * s / k)) for s in range(1, k))


def token_map(tokens: torch.Tensor, grid) -> torch.Tensor:
    """ViT tokens (B, n_prefix + prod(grid), D) -> patch-token map (B, D, *grid) for a 2-D or 3-D grid: explain's
    tokens_to_grid on the rows (d * h) x w, then the rows split back into d x h."""
    m = tokens_to_grid(tokens, math.prod(grid[:-1]), grid[-1])  # (B, D, d * h, w)
    return m.reshape(*m.shape[:2], *grid)  # (B, D, *grid)


class UNETR(nn.Module):
    """forward(images (B, C, H, W) float) -> logits (B, num_classes, H, W); H, W multiples of the patch size.
    On a ViT with spatial_dims=3: (B, C, D, H, W) -> (B, num_classes, D, H, W)."""

    def __init__(self, cfg: UNETRConfig, vit: ViT):
        super().__init__()
        from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock

        p, dim, depth = vit.config.patch_size, vit.config.dim, vit.config.depth
        k = int(math.log2(p))
        if p < 2 or 2**k != p:
            raise ValueError(f"patch_size={p}: UNETR needs a power of two >= 2 (one decoder up-step per factor 2)")
        taps = tuple(cfg.taps) or _default_taps(depth, k)
        if len(taps) != k - 1 or not all(1 <= t <= depth for t in taps):
            raise ValueError(f"taps={taps}: need {k - 1} block numbers in 1..{depth} for patch size {p}")
        cfg.taps, cfg.vit = taps, vit.config.to_dict()
        self.config, self.vit = cfg, vit
        vit.head = nn.Identity()
        dims = vit.config.spatial_dims
        f, common = cfg.feature_size, dict(spatial_dims=dims, norm_name=cfg.norm_name)
        self.stem = UnetrBasicBlock(in_channels=vit.config.in_chans, out_channels=f, kernel_size=3, stride=1,
                                    res_block=cfg.res_block, **common)
        # skip s at 1/2^s: k - s transposed-conv up-steps from the 1/p token grid (num_layer = k - s - 1 extra)
        self.skips = nn.ModuleList([
            UnetrPrUpBlock(in_channels=dim, out_channels=f * 2**s, num_layer=k - s - 1, kernel_size=3, stride=1,
                           upsample_kernel_size=2, conv_block=True, res_block=cfg.res_block, **common)
            for s in range(1, k)])
        # decoder level s (from 1/2^(s+1) to 1/2^s), coarsest first; the bottleneck has `dim` channels
        self.ups = nn.ModuleList([
            UnetrUpBlock(in_channels=dim if s == k - 1 else f * 2**(s + 1), out_channels=f * 2**s, kernel_size=3,
                         upsample_kernel_size=2, res_block=cfg.res_block, **common)
            for s in reversed(range(k))])
        self.out = UnetOutBlock(spatial_dims=dims, in_channels=f, out_channels=cfg.num_classes)

    def hidden_states(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Tokens (B, n_prefix + N, D) after each block (forward hooks on the ViT's blocks); the last one after
        the ViT's final norm (forward_features' output)."""
        states, hooks = [], [blk.register_forward_hook(lambda m, i, o: states.append(o))
                             for blk in self.vit.transformer.blocks]
        try:
            final = self.vit.forward_features(images)
        finally:
            for h in hooks:
                h.remove()
        return states[:-1] + [final]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = self.vit.config.patch_size
        states = self.hidden_states(images)
        grid = [token_map(s, [n // p for n in images.shape[2:]]) for s in states]  # (B, D, H/p, W/p) each
        skips = [self.stem(images)] + [blk(grid[t - 1]) for blk, t in zip(self.skips, self.config.taps)]
        x = grid[-1]
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)  # (B, f * 2^s, H / 2^s, W / 2^s)
        return self.out(x)


UNETR2d = UNETR  # the name of the 2-D-only version


def build_unetr(cfg: UNETRConfig, vit: ViT | None = None) -> UNETR:
    """A UNETR on `vit` (or a fresh ViT from cfg.vit)."""
    if vit is None:
        if not cfg.vit:
            raise ValueError("build_unetr needs a ViT or cfg.vit (a ViTConfig dict)")
        vit = ViT(ViTConfig.from_dict(cfg.vit))
    return UNETR(cfg, vit)


def save_segmenter(model: nn.Module, meta: dict, folder) -> Path:
    """<folder>/segmenter.json (`meta`: kind, config, classes) + model.safetensors."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "segmenter.json").write_text(json.dumps(meta, indent=2, default=list), encoding="utf-8")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder


def load_segmenter(folder) -> tuple[nn.Module, dict]:
    """The model `save_segmenter` wrote (a UNETR or a MONAI UNet), in eval mode, and its meta."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = json.loads((folder / "segmenter.json").read_text(encoding="utf-8"))
    if meta["kind"] == "unetr":
        cfg = meta["config"]
        model = build_unetr(UNETRConfig(**{**cfg, "taps": tuple(cfg["taps"])}))
    else:
        from .baseline import build_unet

        model = build_unet(**meta["config"])
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval(), meta


def unetr_meta(model: UNETR, classes: list[str]) -> dict:
    return {"kind": "unetr", "config": asdict(model.config), "classes": classes}
