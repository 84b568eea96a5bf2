"""DiT: patch embedding + sin-cos positions + adaLN-Zero stack conditioned on (timestep + class/text) + unpatchify."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import ModelConfig, check, opt
from ..nn import (AdaLN, LabelEmbedder, PatchEmbed, StackConfig, TimestepEmbedder, Transformer, build_norm,
                  modulate, sincos_2d, unpatchify)
from ..registry import register_family, register_preset
from .base import Model, init_linear_xavier, stack_params


@dataclass
class DiTConfig(ModelConfig):
    family = "dit"
    input_size: int = opt(32, lo=1)
    patch_size: int = opt(2, lo=1)
    in_channels: int = opt(4, lo=1)
    hidden_size: int = opt(1152, lo=1)
    depth: int = opt(28, lo=1)
    num_heads: int = opt(16, lo=1)
    mlp_ratio: float = opt(4.0, lo=0.01)
    num_classes: int = opt(1000, lo=0)  # 0: no class conditioning
    text_dim: int = opt(0, lo=0)  # >0: a pooled text embedding of this width is added to the condition
    context_dim: int = opt(0, lo=0)  # >0: cross-attention over text tokens of this width
    learn_sigma: bool = True
    timestep_freq_shift: int = opt(0, lo=0, hi=1)  # 0: the DiT paper's timestep frequencies; 1: diffusers' DiT's

    def validate(self):
        super().validate()
        check(self.hidden_size % self.num_heads == 0, "hidden_size must be divisible by num_heads")
        check(self.input_size % self.patch_size == 0, "input_size must be divisible by patch_size")

    def estimate_params(self) -> int:
        d, p = self.hidden_size, self.patch_size
        grid = self.input_size // p
        embeds = p * p * self.in_channels * d + grid * grid * d + (256 + d) * d  # patches, positions, timestep MLP
        cond = (self.num_classes + 1) * d + self.text_dim * d
        final = 2 * d * d + d * p * p * self.out_channels
        return embeds + cond + final + stack_params(d, self.depth, self.mlp_ratio, cond_dim=d,
                                                    context_dim=self.context_dim)

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    def stack(self) -> StackConfig:
        return StackConfig(self.hidden_size, self.depth, self.num_heads, self.mlp_ratio, "gelu_tanh",
                           norm_eps=1e-6, cond_dim=self.hidden_size, context_dim=self.context_dim or None,
                           final_norm=False)


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch: int, out_ch: int):
        super().__init__()
        self.norm = build_norm("layernorm", dim, 1e-6, affine=False)
        self.ada = AdaLN(dim, dim, 2)
        self.linear = nn.Linear(dim, patch * patch * out_ch)

    def forward(self, x, c):
        shift, scale = self.ada(c)
        return self.linear(modulate(self.norm(x), shift, scale))


@register_family
class DiT(Model):
    """forward(x (B, C, H, W), t (B,), y=None (B,), text=None (B, text_dim), context=None (B, L, context_dim))
    -> (B, out_channels, H, W). Null class id = num_classes (LabelEmbedder.null_id)."""

    config_class = DiTConfig

    def __init__(self, config: DiTConfig):
        super().__init__(config)
        c = config
        self.x_embedder = PatchEmbed(c.input_size, c.patch_size, c.in_channels, c.hidden_size)
        grid = c.input_size // c.patch_size
        self.register_buffer("pos_embed", sincos_2d(c.hidden_size, grid)[None], persistent=False)
        self.t_embedder = TimestepEmbedder(c.hidden_size, freq_shift=c.timestep_freq_shift)
        self.y_embedder = LabelEmbedder(c.num_classes, c.hidden_size) if c.num_classes else None
        self.text_proj = nn.Linear(c.text_dim, c.hidden_size) if c.text_dim else None
        self.transformer = Transformer(c.stack())
        self.final_layer = FinalLayer(c.hidden_size, c.patch_size, c.out_channels)
        self.init_weights()

    def init_weights(self):
        self.apply(init_linear_xavier)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        for m in self.modules():  # adaLN-Zero: every block starts as the identity
            if isinstance(m, AdaLN):
                nn.init.zeros_(m.linear.weight)
                nn.init.zeros_(m.linear.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    @property
    def null_label(self) -> int:
        return self.config.num_classes

    def condition(self, t, y=None, text=None) -> torch.Tensor:
        c = self.t_embedder(t)  # (B, D)
        if self.y_embedder is not None:
            if y is None:
                y = torch.full_like(t, self.null_label, dtype=torch.long)
            c = c + self.y_embedder(y)
        if self.text_proj is not None and text is not None:
            c = c + self.text_proj(text)
        return c

    def forward(self, x, t, y=None, text=None, context=None, context_mask=None):
        B, C, H, W = x.shape
        p = self.config.patch_size
        if C != self.config.in_channels or H != self.config.input_size or W != self.config.input_size:
            raise ValueError(f"DiT expects (B, {self.config.in_channels}, {self.config.input_size}, "
                             f"{self.config.input_size}), got {tuple(x.shape)}")
        h = self.x_embedder(x) + self.pos_embed  # (B, N, D)
        c = self.condition(t, y, text)
        h = self.transformer(h, c=c, context=context, context_mask=context_mask)
        h = self.final_layer(h, c)  # (B, N, p*p*out)
        return unpatchify(h, p, self.config.out_channels, H // p, W // p)  # (B, out, H, W)

    def example_inputs(self, batch_size: int = 2) -> dict:
        c = self.config
        out = {"x": torch.randn(batch_size, c.in_channels, c.input_size, c.input_size),
               "t": torch.randint(0, 1000, (batch_size,))}
        if c.num_classes:
            out["y"] = torch.arange(batch_size) % (c.num_classes + 1)  # includes the null label
        if c.text_dim:
            out["text"] = torch.randn(batch_size, c.text_dim)
        if c.context_dim:
            out["context"] = torch.randn(batch_size, 5, c.context_dim)
        return out


_BASE = DiTConfig()
register_preset("dit-test", _BASE.replace(input_size=16, patch_size=4, in_channels=1, hidden_size=32, depth=2,
                                          num_heads=2, num_classes=10, learn_sigma=False))
# 28x28 grey images (MNIST-5k, animal silhouettes): 7x7 patches of 4 px, 20 classes
register_preset("dit-mini-4", _BASE.replace(input_size=28, patch_size=4, in_channels=1, hidden_size=128, depth=6,
                                            num_heads=4, num_classes=20, learn_sigma=False))
register_preset("dit-s-2", _BASE.replace(hidden_size=384, depth=12, num_heads=6))
register_preset("dit-b-2", _BASE.replace(hidden_size=768, depth=12, num_heads=12))
register_preset("dit-xl-2", _BASE)
