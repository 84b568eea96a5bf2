"""Feed-forward layers: GELU MLP (exact, tanh or OpenAI CLIP's QuickGELU), ReLU² MLP, SwiGLU and GEGLU."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

_C0, _C1 = math.sqrt(2 / math.pi), 0.044715 * math.sqrt(2 / math.pi)


class GELU(nn.GELU):
    """nn.GELU. At inference on CPU the tanh form runs as x * sigmoid(2 (c0 x + c1 x^3)), the same function
    (to 5e-7) in three in-place passes: ATen's tanh-GELU CPU kernel is 1.3-2x slower than that here, and it
    is 12% of a DiT-S/2 sampling step. Training (inputs that need grad) and other devices use F.gelu."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.approximate != "tanh" or x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad):
            return F.gelu(x, approximate=self.approximate)
        z = torch.addcmul(torch.tensor(2 * _C0, dtype=x.dtype), x, x, value=2 * _C1)  # 2 c0 + 2 c1 x^2
        return z.mul_(x).sigmoid_().mul_(x)  # sigmoid(2u) = (1 + tanh(u)) / 2


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation of OpenAI's original CLIP weights (open_clip's `*-quickgelu`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ReLUSquared(nn.Module):
    """relu(x)^2: the MLP activation of Primer (So et al. 2021) and the modded-nanogpt speedruns."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, bias: bool = True, drop: float = 0.0, approximate: str = "none",
                 act: nn.Module | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.act = GELU(approximate=approximate) if act is None else act
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

    act = staticmethod(F.silu)

    def forward(self, x):
        gate, up = self.fc1(x).chunk(2, dim=-1)
        return self.drop(self.fc2(self.act(gate) * up))


def _gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


class GEGLU(SwiGLU):
    """fc2(gelu_tanh(w_gate x) * w_up x): T5 v1.1's gated-GELU; `hidden` is the inner width."""

    act = staticmethod(_gelu_tanh)


def build_mlp(kind: str, dim: int, hidden: int, bias: bool = True, drop: float = 0.0) -> nn.Module:
    if kind == "gelu":
        return Mlp(dim, hidden, bias=bias, drop=drop)
    if kind == "gelu_tanh":
        return Mlp(dim, hidden, bias=bias, drop=drop, approximate="tanh")
    if kind == "relu2":
        return Mlp(dim, hidden, bias=bias, drop=drop, act=ReLUSquared())
    if kind == "quick_gelu":
        return Mlp(dim, hidden, bias=bias, drop=drop, act=QuickGELU())
    if kind == "swiglu":
        return SwiGLU(dim, hidden, bias=bias, drop=drop)
    if kind == "geglu_tanh":
        return GEGLU(dim, hidden, bias=bias, drop=drop)
    raise ValueError(f"unknown mlp kind {kind!r}; choose from 'gelu', 'gelu_tanh', 'relu2', 'quick_gelu', "
                     "'swiglu', 'geglu_tanh'")
