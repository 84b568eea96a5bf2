"""adaLN-Zero conditioning (DiT): a condition vector sets shift/scale/gate per sub-layer."""
from __future__ import annotations

import torch
import torch.nn as nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x: (B, T, C); shift, scale: (B, C). One fused multiply-add over x: shift + x * (1 + scale)."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


class AdaLN(nn.Module):
    """SiLU -> Linear(cond_dim, n_chunks * dim), zero-initialised so a block starts as identity."""

    def __init__(self, cond_dim: int, dim: int, n_chunks: int):
        super().__init__()
        self.n_chunks = n_chunks
        self.act = nn.SiLU()
        self.linear = nn.Linear(cond_dim, n_chunks * dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(self.act(c)).chunk(self.n_chunks, dim=-1)  # n_chunks x (B, dim)
