"""What every mmfm model shares: its config, a tokenizer slot, save_pretrained, init helpers."""
from __future__ import annotations

import torch.nn as nn

from ..checkpoint import save_pretrained
from ..config import ModelConfig


class Model(nn.Module):
    config_class: type[ModelConfig] = ModelConfig

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.tokenizer = None  # set by recipes or loaded from a folder's tokenizer/

    def save_pretrained(self, path):
        return save_pretrained(self, path)

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def example_inputs(self, batch_size: int = 2) -> dict:
        """Small valid inputs for tests and benchmarks: model(**example_inputs())."""
        raise NotImplementedError


def stack_params(dim: int, depth: int, mlp_ratio: float, mlp: str = "gelu", cond_dim: int = 0,
                 context_dim: int = 0) -> int:
    """About the parameter count of a Transformer stack (weights exactly; biases and norms as 10 * dim per
    block), in Python ints so that absurd sizes are counted, not overflowed, before anything is allocated."""
    hidden = int(dim * mlp_ratio)
    block = 4 * dim * dim + (3 if mlp == "swiglu" else 2) * dim * hidden + 10 * dim + hidden
    if context_dim:
        block += 2 * dim * dim + 2 * context_dim * dim
    if cond_dim:
        block += cond_dim * 6 * dim
    return depth * block


def init_linear_normal(module: nn.Module, std: float = 0.02) -> None:
    """GPT-style init: normal(0, std) weights, zero biases, for Linear and Embedding."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)


def init_linear_xavier(module: nn.Module) -> None:
    """ViT/DiT-style init: xavier-uniform Linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
