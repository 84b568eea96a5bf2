"""GPT: token embedding + (learned or rotary) positions + causal stack + LM head."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig, check, opt
from ..nn import LearnedPosEmbed, StackConfig, StackDecoder, Transformer
from ..registry import register_family, register_preset
from .base import Model, init_linear_normal, stack_params
from .generation import generate


@dataclass
class GPTConfig(ModelConfig):
    family = "gpt"
    vocab_size: int = opt(50257, lo=1)
    block_size: int = opt(1024, lo=1)
    n_layer: int = opt(12, lo=1)
    n_head: int = opt(12, lo=1)
    n_embd: int = opt(768, lo=1)
    mlp_ratio: float = opt(4.0, lo=0.01)
    mlp: str = opt("gelu", choices=("gelu", "gelu_tanh", "swiglu", "relu2"))  # relu2: ReLU squared
    norm: str = opt("layernorm", choices=("layernorm", "rmsnorm"))
    norm_eps: float = opt(1e-5, lo=0.0)
    pos: str = opt("learned", choices=("learned", "rope"))
    rope_base: float = opt(10000.0, lo=1.0)
    bias: bool = True
    tie_weights: bool = True
    qk_norm: bool = False  # RMSNorm on each head's query and key (modded-nanogpt, OLMo 2)
    zero_init_proj: bool = False  # attention and MLP output projections start at zero (modded-nanogpt)
    dropout: float = opt(0.0, lo=0.0, hi=1.0)
    context_dim: int = opt(0, lo=0)  # > 0: cross-attention in every block to a context of this width

    def validate(self):
        super().validate()
        check(self.n_embd % self.n_head == 0, f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        check(self.pos != "rope" or (self.n_embd // self.n_head) % 2 == 0,
              f"pos='rope' needs an even head width; n_embd/n_head = {self.n_embd}/{self.n_head} is odd")

    def estimate_params(self) -> int:
        emb = self.vocab_size * self.n_embd * (1 if self.tie_weights else 2)
        pos = self.block_size * self.n_embd if self.pos == "learned" else 0
        return emb + pos + stack_params(self.n_embd, self.n_layer, self.mlp_ratio, self.mlp,
                                        context_dim=self.context_dim)

    def stack(self) -> StackConfig:
        return StackConfig(self.n_embd, self.n_layer, self.n_head, self.mlp_ratio, self.mlp, self.norm,
                           self.norm_eps, causal=True, bias=self.bias, dropout=self.dropout,
                           rope=self.pos == "rope", rope_base=self.rope_base, context_dim=self.context_dim or None,
                           qk_norm=self.qk_norm)


@register_family
class GPT(Model):
    """forward(idx (B, T), key_padding_mask=None, positions=None, caches=None, prefix=None, context=None,
    context_mask=None) -> logits (B, T, V). `prefix` (B, P, C) embeddings enter the stream before the tokens (the
    logits cover the tokens only); `context` (B, Tc, context_dim) is what the cross-attention reads."""

    config_class = GPTConfig

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = LearnedPosEmbed(c.block_size, c.n_embd) if c.pos == "learned" else None
        self.drop = nn.Dropout(c.dropout)
        self.transformer = Transformer(c.stack())
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.init_weights()
        if c.tie_weights:
            self.lm_head.weight = self.wte.weight

    def init_weights(self):
        self.apply(init_linear_normal)
        if self.wpe is not None:
            nn.init.normal_(self.wpe.weight, std=0.02)
        for name, p in self.named_parameters():  # GPT-2: scaled init of residual projections; or zeros
            if name.endswith(("attn.proj.weight", "mlp.fc2.weight")):
                if self.config.zero_init_proj:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, std=0.02 / math.sqrt(2 * self.config.n_layer))

    def forward(self, idx, key_padding_mask=None, positions=None, caches=None, prefix=None, context=None,
                context_mask=None):
        B, T = idx.shape
        P = 0 if prefix is None else prefix.shape[1]
        if P and positions is not None:
            raise ValueError("a prefix takes the first positions: give positions=None with prefix")
        T += P
        given = positions is not None  # else the stack counts from the cache too (RoPE: its cached tables)
        if not given:
            start = caches[0].length if caches else 0
            last = start + T - 1
            positions = torch.arange(start, start + T, device=idx.device)  # (T,)
        else:
            last = int(positions.max()) if self.wpe is not None else 0
        if self.wpe is not None and last >= self.config.block_size:
            raise ValueError(f"sequence position {last} exceeds block_size {self.config.block_size}")
        x = self.wte(idx)
        if P:
            x = torch.cat([prefix.to(x.dtype), x], dim=1)  # (B, P + T, C)
        if self.wpe is not None:
            x = x + F.embedding(positions, self.wpe.weight)  # (T, C) or (B, T, C); range checked above
        if self.config.dropout:
            x = self.drop(x)
        x = self.transformer(x, key_padding_mask=key_padding_mask, positions=positions if given else None,
                             caches=caches, context=context, context_mask=context_mask)
        return self.lm_head(x[:, P:])

    def decoder(self, caches):
        """A one-token step over prefilled `caches`, or None where the stack has a part it does not cover:
        step(tokens (B,), pos, positions=None (B,), key_mask=None (B, Tk)) -> logits (B, V)."""
        if not StackDecoder.supports(self.transformer):
            return None
        stack, wte, head_t = StackDecoder(self.transformer, caches), self.wte.weight, self.lm_head.weight.t()
        wpe = self.wpe.weight if self.wpe is not None else None

        def step(tokens, pos, positions=None, key_mask=None):
            x = F.embedding(tokens, wte)  # (B, C)
            if wpe is not None:
                x = x + (wpe[pos] if positions is None else F.embedding(positions, wpe))
            return torch.mm(stack.step(x, pos, positions, key_mask), head_t)  # F.linear's kernel, no per-step .t()
        return step

    def generate(self, prompts, max_new_tokens: int, **kwargs):
        """Sample with a KV cache; see `mmfm.models.generation.generate` for every argument.

        generate(prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None, stop_tokens=None,
                 stop_strings=None, return_logprobs=False, use_cache=True, generator=None) -> Generation
        """
        return generate(self, prompts, max_new_tokens, **kwargs)

    def example_inputs(self, batch_size: int = 2) -> dict:
        T = min(16, self.config.block_size)
        return {"idx": torch.randint(0, self.config.vocab_size, (batch_size, T))}


_BASE = GPTConfig()
register_preset("gpt-test", _BASE.replace(vocab_size=256, block_size=64, n_layer=2, n_head=2, n_embd=32))
register_preset("gpt-mini", _BASE.replace(vocab_size=256, block_size=256, n_layer=4, n_head=4, n_embd=256))
# the default of recipes/gpt_pretrain.py: char-level Shakespeare on 2 CPU cores in 10 minutes
# relu2 + qk_norm: round nine; width 128 (was 192): round thirteen (docs/performance.md)
register_preset("gpt-shakespeare-char", _BASE.replace(vocab_size=78, block_size=256, n_layer=4, n_head=4, n_embd=128,
                                                      norm="rmsnorm", pos="rope", bias=False, mlp="relu2",
                                                      qk_norm=True))
register_preset("gpt2-124m", _BASE)
register_preset("gpt2-medium", _BASE.replace(n_layer=24, n_head=16, n_embd=1024))
