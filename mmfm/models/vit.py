"""ViT: patch embedding + class token + learned positions + bidirectional stack + pooling + head."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed, trunc_normal_

from ..config import ModelConfig, check, opt
from ..nn import PatchEmbed, StackConfig, Transformer, build_norm
from ..nn.embed3d import PatchEmbed3d, resample_pos_3d
from ..registry import register_family, register_preset
from .base import Model, init_linear_xavier, stack_params


PIXELS = ((0.5,), (0.5,))  # (mean, std) of mmfm's ViT convention: pixels in [0, 1] -> [-1, 1]


def image_tensor(images, dtype: torch.dtype, mean=PIXELS[0], std=PIXELS[1], spatial_dims: int = 2) -> torch.Tensor:
    """Images as the model's input: uint8 (B, C, H, W) pixels scaled to [0, 1] and normalised with (mean, std);
    float images (already normalised) cast to the model's dtype; anything else refused by name.
    spatial_dims=3: volumes (B, C, D, H, W)."""
    layout = "(B, C, H, W)" if spatial_dims == 2 else "(B, C, D, H, W)"
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor {layout}, got {type(images).__name__}")
    if images.dim() != 2 + spatial_dims:
        raise ValueError(f"images must be {layout}, got shape {tuple(images.shape)}"
                         + ("; add the batch dimension with images[None]" if images.dim() == 1 + spatial_dims else ""))
    if images.dtype == torch.uint8:
        m = torch.tensor(mean, dtype=dtype, device=images.device).view(1, -1, *[1] * spatial_dims)
        s = torch.tensor(std, dtype=dtype, device=images.device).view(1, -1, *[1] * spatial_dims)
        return (images.to(dtype) / 255 - m) / s
    if not images.dtype.is_floating_point:
        raise TypeError(f"images must be uint8 pixels or normalised floats, got dtype {images.dtype}")
    return images.to(dtype)


@dataclass
class ViTConfig(ModelConfig):
    family = "vit"
    img_size: int = opt(224, lo=1)
    patch_size: int = opt(16, lo=1)
    in_chans: int = opt(3, lo=1)
    dim: int = opt(768, lo=1)
    depth: int = opt(12, lo=1)
    n_heads: int = opt(12, lo=1)
    mlp_ratio: float = opt(4.0, lo=0.01)
    mlp: str = opt("gelu", choices=("gelu", "gelu_tanh", "quick_gelu", "swiglu"))
    norm_eps: float = opt(1e-6, lo=0.0)
    pool: str = opt("cls", choices=("cls", "mean"))
    class_token: bool = True
    pre_norm: bool = False  # a norm after embedding (CLIP's ln_pre)
    num_classes: int = opt(0, lo=0)  # 0: forward returns pooled features
    dropout: float = opt(0.0, lo=0.0, hi=1.0)
    drop_path: float = opt(0.0, lo=0.0, hi=1.0)
    patch_bias: bool = True
    fc_norm: bool = False  # norm after pooling instead of on every token (timm's global_pool="avg" layout)
    ls_init: float | None = None  # layer-scale init (timm's init_values); None: off
    spatial_dims: int = opt(2, choices=(2, 3))  # 3: volumes (B, C, D, H, W), cubic patches (PatchEmbed3d)
    img_depth: int = opt(0, lo=0)  # spatial_dims=3: depth (voxels) the position table is laid out for; 0: img_size

    def validate(self):
        super().validate()
        check(self.dim % self.n_heads == 0, f"dim={self.dim} must be divisible by n_heads={self.n_heads}")
        check(self.img_size % self.patch_size == 0, f"img_size={self.img_size} not divisible by patch_size={self.patch_size}")
        check(self.pool == "mean" or self.class_token, "pool='cls' needs class_token=True")
        check(self.spatial_dims == 3 or not self.img_depth, f"img_depth={self.img_depth} needs spatial_dims=3")
        check((self.img_depth or self.img_size) % self.patch_size == 0,
              f"img_depth={self.img_depth} not divisible by patch_size={self.patch_size}")

    def estimate_params(self) -> int:
        patch = self.patch_size**self.spatial_dims * self.in_chans * self.dim
        pos = (math.prod(self.grid_shape) + 1) * self.dim
        return patch + pos + stack_params(self.dim, self.depth, self.mlp_ratio, self.mlp) + self.dim * self.num_classes

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def grid_shape(self) -> tuple[int, ...]:
        """The position table's token grid: (grid, grid), or (depth, grid, grid) for spatial_dims=3."""
        if self.spatial_dims == 2:
            return (self.grid, self.grid)
        return ((self.img_depth or self.img_size) // self.patch_size, self.grid, self.grid)

    def stack(self) -> StackConfig:
        return StackConfig(self.dim, self.depth, self.n_heads, self.mlp_ratio, self.mlp, "layernorm",
                           self.norm_eps, dropout=self.dropout, drop_path=self.drop_path,
                           final_norm=not self.fc_norm, ls_init=self.ls_init)


@register_family
class ViT(Model):
    """forward(images (B, C, H, W)) -> logits (B, num_classes), or pooled features (B, dim) if num_classes=0.

    Any H, W divisible by the patch size works (positions are resampled); a 1-channel image
    given to a 3-channel model is repeated across channels. uint8 images are scaled to [-1, 1] (PIXELS);
    float images are taken as normalised and cast to the model's dtype.
    """

    config_class = ViTConfig

    def __init__(self, config: ViTConfig):
        super().__init__(config)
        c = config
        if c.spatial_dims == 3:
            self.patch_embed = PatchEmbed3d(c.patch_size, c.in_chans, c.dim, bias=c.patch_bias)
        else:
            self.patch_embed = PatchEmbed(c.img_size, c.patch_size, c.in_chans, c.dim, bias=c.patch_bias,
                                          strict_img_size=False, dynamic_img_pad=False)
        n_prefix = 1 if c.class_token else 0
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim)) if c.class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, math.prod(c.grid_shape) + n_prefix, c.dim))
        self.norm_pre = build_norm("layernorm", c.dim, c.norm_eps) if c.pre_norm else nn.Identity()
        self.transformer = Transformer(c.stack())
        self.fc_norm = build_norm("layernorm", c.dim, c.norm_eps) if c.fc_norm else nn.Identity()
        self.head = nn.Linear(c.dim, c.num_classes) if c.num_classes else nn.Identity()
        self.init_weights()

    def init_weights(self):
        self.apply(init_linear_xavier)
        trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if isinstance(self.head, nn.Linear):
            nn.init.zeros_(self.head.weight)

    def _pos(self, *grid: int) -> torch.Tensor:
        """The table for an h x w patch grid (1, n_prefix + h * w, D): timm's bicubic resample of the stored grid,
        class-token row kept. antialias=False is mmfm's plain bicubic (timm's default antialias=True differs).
        A d x h x w grid (spatial_dims=3) is resampled trilinearly."""
        n_prefix = 1 if self.cls_token is not None else 0
        if len(grid) == 3:
            return resample_pos_3d(self.pos_embed, grid, self.config.grid_shape, num_prefix_tokens=n_prefix)
        return resample_abs_pos_embed(self.pos_embed, list(grid), list(self.config.grid_shape),
                                      num_prefix_tokens=n_prefix, antialias=False)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) (or (B, C, D, H, W) with spatial_dims=3) -> tokens (B, n_prefix + N, dim) after the final
        norm; N = H/p * W/p (or D/p * H/p * W/p) in raster order."""
        images = image_tensor(images, self.patch_embed.proj.weight.dtype, spatial_dims=self.config.spatial_dims)
        B, C, *size = images.shape
        if C != self.config.in_chans:
            if C == 1:
                images = images.expand(B, self.config.in_chans, *size)
            else:
                raise ValueError(f"model takes {self.config.in_chans}-channel images, got {C} channels")
        p = self.config.patch_size
        if any(s % p or not s for s in size) or not B:
            raise ValueError(f"images must be (B, {self.config.in_chans}, {', '.join('DHW'[-len(size):])}) with "
                             f"B >= 1 and sides positive and divisible by the patch size {p}, got shape "
                             f"{tuple(images.shape)}")
        x = self.patch_embed(images)  # (B, N, D)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)  # (B, 1 + N, D)
        x = self.norm_pre(x + self._pos(*(s // p for s in size)))
        return self.transformer(x)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, n_prefix + N, dim) -> (B, dim): the class token or the mean of the patch tokens (+ fc_norm)."""
        if self.config.pool == "cls":
            return self.fc_norm(tokens[:, 0])
        return self.fc_norm(tokens[:, 1 if self.cls_token is not None else 0:].mean(dim=1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.forward_features(images)))

    def example_inputs(self, batch_size: int = 2) -> dict:
        c = self.config
        depth = (c.img_depth or c.img_size,) if c.spatial_dims == 3 else ()
        return {"images": torch.randn(batch_size, c.in_chans, *depth, c.img_size, c.img_size)}


_BASE = ViTConfig()
register_preset("vit-test", _BASE.replace(img_size=32, patch_size=8, dim=32, depth=2, n_heads=2, num_classes=10))
# the default CPU size: 28x28 grayscale (MNIST, animal silhouettes), 4x4 grid of 7x7 patches
register_preset("vit-mini", _BASE.replace(img_size=28, patch_size=7, in_chans=1, dim=128, depth=4, n_heads=4,
                                          num_classes=10))
register_preset("vit-ti-16", _BASE.replace(dim=192, n_heads=3))
register_preset("vit-s-16", _BASE.replace(dim=384, n_heads=6))
register_preset("vit-b-16", _BASE)
