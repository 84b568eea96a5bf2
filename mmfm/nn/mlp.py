"""Feed-forward layers: GELU MLP and SwiGLU."""
from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool = True, drop: float = 0.0, approximate: str = "none"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.act(self.fc1(x))))


class SwiGLU(nn.Module):
    """fc2(silu(w_gate x) * w_up x); `hidden` is the inner width."""

    def __init__(self, dim: int, hidden: int, bias: bool = False, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        gate, up = self.fc1(x).chunk(2, dim=-1)
        return self.drop(self.fc2(F.silu(gate) * up))


def build_mlp(kind: str, dim: int, hidden: int, bias: bool = True, drop: float = 0.0) -> nn.Module:
    if kind == "gelu":
        return Mlp(dim, hidden, bias=bias, drop=drop)
    if kind == "gelu_tanh":
        return Mlp(dim, hidden, bias=bias, drop=drop, approximate="tanh")
    if kind == "swiglu":
        return SwiGLU(dim, hidden, bias=bias, drop=drop)
    raise ValueError(f"unknown mlp kind {kind!r}; choose from 'gelu', 'gelu_tanh', 'swiglu'")
