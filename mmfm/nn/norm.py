"""LayerNorm and RMSNorm (both torch's own) behind one builder."""
from __future__ import annotations

import torch.nn as nn


class RMSNorm(nn.RMSNorm):
    """torch.nn.RMSNorm with mmfm's argument names: x / sqrt(mean(x^2) + eps) * weight, one `weight` (dim,) when
    affine, so folders saved with mmfm's earlier hand-written RMSNorm load unchanged."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True):
        super().__init__(dim, eps=eps, elementwise_affine=affine)


def build_norm(kind: str, dim: int, eps: float = 1e-5, affine: bool = True, bias: bool = True) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, elementwise_affine=affine, bias=bias and affine)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps, affine=affine)
    raise ValueError(f"unknown norm kind {kind!r}; choose from 'layernorm', 'rmsnorm'")
