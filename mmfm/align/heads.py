"""Scalar heads on the GPT backbone: a reward model (one score per sequence) and a policy with a
value head (one value per token). Both reuse the GPT's own forward (embeddings, positions, masks,
caches) and read its final hidden states; nothing of the model is copied."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_model, save_model

from ..registry import build_model


def logits_and_hidden(gpt: nn.Module, idx: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """One GPT forward -> (logits (B, T, V), final hidden states (B, T, C)), via a hook that lives
    only for this call."""
    seen = {}
    handle = gpt.transformer.register_forward_hook(lambda mod, args, out: seen.setdefault("h", out))
    try:
        logits = gpt(idx, **kw)
    finally:
        handle.remove()
    return logits, seen["h"]


def last_token(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, T, ...) at each row's last real token of a right-padded mask (B, T) -> (B, ...)."""
    last = mask.long().sum(1) - 1  # (B,)
    return x[torch.arange(x.shape[0], device=x.device), last]


def scalar_head(dim: int) -> nn.Linear:
    head = nn.Linear(dim, 1)
    nn.init.normal_(head.weight, std=1 / (dim + 1) ** 0.5)
    nn.init.zeros_(head.bias)
    return head


class HeadedModel(nn.Module):
    """A GPT plus one scalar head; saved as the GPT's folder + head.safetensors + head.json."""

    head_name = "head"

    def __init__(self, gpt: nn.Module):
        super().__init__()
        self.gpt = gpt
        self.head = scalar_head(gpt.config.n_embd)
        self.config = gpt.config

    def save_pretrained(self, path) -> Path:
        path = Path(self.gpt.save_pretrained(path))
        save_model(self.head, str(path / "head.safetensors"))
        (path / "head.json").write_text(json.dumps({"kind": type(self).__name__}))
        return path

    @classmethod
    def from_pretrained(cls, path) -> "HeadedModel":
        model = cls(build_model(path))
        load_model(model.head, str(Path(path) / "head.safetensors"))
        return model


class RewardModel(HeadedModel):
    """forward(ids (B, T) right-padded, mask (B, T)) -> reward (B,) read at the last real token."""

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        _, h = logits_and_hidden(self.gpt, ids)  # right padding: causal attention never sees the pads
        return self.head(last_token(h, mask)).squeeze(-1)


class PolicyWithValue(HeadedModel):
    """forward(ids (B, T)) -> (logits (B, T, V), values (B, T)); the value head shares the backbone."""

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, h = logits_and_hidden(self.gpt, ids)
        return logits, self.head(h).squeeze(-1)
