"""Embeddings: patches (timm's PatchEmbed), timesteps and class labels."""
from __future__ import annotations

import torch
import torch.nn as nn
from timm import layers as timm_layers

from .pos import timestep_frequencies

__all__ = ["PatchEmbed", "TimestepEmbedder", "LabelEmbedder", "patchify", "unpatchify"]


class PatchEmbed(timm_layers.PatchEmbed):
    """timm's PatchEmbed (same arguments and weights) returning contiguous tokens (B, N, D). timm's
    flatten(2).transpose(1, 2) is a view with a (B, D, N) memory layout; elementwise ops keep their input's
    layout, so without this copy the whole residual stream stays transposed and every LayerNorm and
    Linear pays a hidden copy (measured: DiT-S/2 sampling ~10% slower)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).contiguous()


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of t -> MLP -> (N, dim)."""

    def __init__(self, dim: int, freq_dim: int = 256, freq_shift: int = 0):
        super().__init__()
        self.freq_dim, self.freq_shift = freq_dim, freq_shift
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_frequencies(t, self.freq_dim, freq_shift=self.freq_shift).to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels -> (N, dim). Index `num_classes` is the null (unconditional) label for CFG."""

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    @property
    def null_id(self) -> int:
        return self.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.table(labels)


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, p*p*C)."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // p, p, W // p, p)  # (B, C, h, p, w, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(x: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    """(B, h*w, p*p*c) -> (B, c, h*p, w*p) for a grid of h x w patches."""
    B = x.shape[0]
    x = x.reshape(B, h, w, p, p, c)  # (B, h, w, p, p, c)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(B, c, h * p, w * p)
