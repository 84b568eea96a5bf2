"""Adaptation methods: linear probe (only the head trains), LoRA (adapters + head), full fine-tuning."""
from __future__ import annotations

import torch.nn as nn

from .head import attach_head, load_backbone
from .lora import add_lora

METHODS = ("linear", "lora", "full")


def apply_method(vit: nn.Module, method: str, lora_rank: int = 8, lora_alpha: float = 16.0,
                 lora_dropout: float = 0.0) -> nn.Module:
    """Set what trains. `vit` must already carry its task head (attach_head)."""
    if method == "full":
        vit.requires_grad_(True)
        return vit
    if method == "linear":
        vit.requires_grad_(False)
        vit.head.requires_grad_(True)
        return vit
    if method == "lora":
        return add_lora(vit, lora_rank, lora_alpha, lora_dropout)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def build_adapted(init, n_outputs: int, method: str, from_scratch: bool = False, lora: dict | None = None,
                  **overrides) -> nn.Module:
    """Backbone of `init` (preset or folder; ViT or CLIP, config overrides) + a fresh head + the
    method's trainable set (`lora`: rank / alpha / dropout for method='lora')."""
    vit = attach_head(load_backbone(init, from_scratch, **overrides), n_outputs)
    return apply_method(vit, method, **(lora or {}))


def count_params(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params": total, "trainable_params": trainable}
