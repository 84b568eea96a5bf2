"""T5 (v1.1): a shared token embedding, a bidirectional encoder and a causal decoder with cross-attention,
both pre-norm RMSNorm stacks with gated-GELU feed-forwards and no biases; positions are T5's bucketed
relative position bias, added to the self-attention scores (one table per stack, shared by its layers).

T5 does not scale attention scores by 1/sqrt(head_dim); the shared stack does, so the query weights here
hold T5's times sqrt(head_dim) (the interop folds this in both ways).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig, check, opt
from ..nn import StackConfig, Transformer
from ..registry import register_family, register_preset
from .base import Model, stack_params


@dataclass
class T5Config(ModelConfig):
    family = "t5"
    vocab_size: int = opt(32128, lo=1)
    n_embd: int = opt(512, lo=1)  # d_model
    n_head: int = opt(6, lo=1)
    head_dim: int = opt(64, lo=1)  # d_kv
    d_ff: int = opt(1024, lo=1)
    n_layer: int = opt(8, lo=1)  # encoder layers
    n_decoder_layer: int = opt(8, lo=1)
    rel_buckets: int = opt(32, lo=2)
    rel_max_distance: int = opt(128, lo=2)
    norm_eps: float = opt(1e-6, lo=0.0)
    dropout: float = opt(0.1, lo=0.0, hi=1.0)
    tie_weights: bool = False  # the LM head is the token embedding (T5 v1.0); v1.1 unties it
    scale_output: bool = False  # decoder output times n_embd ** -0.5 before the head (T5 v1.0)
    pad_id: int = opt(0, lo=0)  # also the decoder's start token
    eos_id: int = opt(1, lo=0)

    def validate(self):
        super().validate()
        check(max(self.pad_id, self.eos_id) < self.vocab_size,
              f"pad_id={self.pad_id} and eos_id={self.eos_id} must be < vocab_size={self.vocab_size}")

    def estimate_params(self) -> int:
        c, inner = self.n_embd, self.n_head * self.head_dim
        attn = 4 * c * inner
        enc = self.n_layer * (attn + 3 * c * self.d_ff + 2 * c)
        dec = self.n_decoder_layer * (2 * attn + 3 * c * self.d_ff + 3 * c)
        return self.vocab_size * c * (1 if self.tie_weights else 2) + enc + dec + 2 * self.rel_buckets * self.n_head

    def stack(self, decoder: bool) -> StackConfig:
        return StackConfig(self.n_embd, self.n_decoder_layer if decoder else self.n_layer, self.n_head,
                           mlp="geglu_tanh", norm="rmsnorm", norm_eps=self.norm_eps, causal=decoder, bias=False,
                           dropout=self.dropout, context_dim=self.n_embd if decoder else None,
                           mlp_hidden=self.d_ff, head_dim=self.head_dim)


def relative_bucket(rel: torch.Tensor, bidirectional: bool, n_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's bucket of each relative position (key - query): exact below n/4 (or n/2 one-sided), then
    logarithmic up to max_distance; the sign takes half the buckets when bidirectional."""
    bucket = torch.zeros_like(rel)
    if bidirectional:
        n_buckets //= 2
        bucket = bucket + (rel > 0).long() * n_buckets
        rel = rel.abs()
    else:
        rel = -torch.clamp(rel, max=0)
    exact = n_buckets // 2
    large = exact + (torch.log(rel.float() / exact) / math.log(max_distance / exact) * (n_buckets - exact)).long()
    large = torch.clamp(large, max=n_buckets - 1)
    return bucket + torch.where(rel < exact, rel, large)


class RelativePositionBias(nn.Module):
    """forward(q_len, k_len, offset=0) -> (1, H, q_len, k_len) scores for queries at offset..offset+q_len-1."""

    def __init__(self, n_heads: int, n_buckets: int, max_distance: int, bidirectional: bool):
        super().__init__()
        self.table = nn.Embedding(n_buckets, n_heads)
        self.n_buckets, self.max_distance, self.bidirectional = n_buckets, max_distance, bidirectional

    def forward(self, q_len: int, k_len: int, offset: int = 0) -> torch.Tensor:
        device = self.table.weight.device
        q = torch.arange(offset, offset + q_len, device=device)[:, None]
        k = torch.arange(k_len, device=device)[None, :]
        buckets = relative_bucket(k - q, self.bidirectional, self.n_buckets, self.max_distance)  # (Tq, Tk)
        return self.table(buckets).permute(2, 0, 1).unsqueeze(0)  # (Tq, Tk, H) -> (1, H, Tq, Tk)


@register_family
class T5(Model):
    """forward(input_ids (B, S), decoder_input_ids (B, T), attention_mask=None (B, S)) -> logits (B, T, V).

    encode(input_ids, attention_mask) -> memory (B, S, C); decode(decoder_input_ids, memory, attention_mask,
    caches=None) -> logits, one or more new tokens at a time over KV `caches` (decoder.new_caches);
    generate(input_ids, max_new_tokens, attention_mask=None) -> greedy tokens (B, <= max_new_tokens).
    """

    config_class = T5Config

    def __init__(self, config: T5Config):
        super().__init__(config)
        c = config
        self.shared = nn.Embedding(c.vocab_size, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.encoder = Transformer(c.stack(decoder=False))
        self.decoder = Transformer(c.stack(decoder=True))
        self.enc_bias = RelativePositionBias(c.n_head, c.rel_buckets, c.rel_max_distance, bidirectional=True)
        self.dec_bias = RelativePositionBias(c.n_head, c.rel_buckets, c.rel_max_distance, bidirectional=False)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.init_weights()
        if c.tie_weights:
            self.lm_head.weight = self.shared.weight

    def init_weights(self):
        """T5's init (Mesh TensorFlow): std 1 embeddings, fan-in scaled projections; the query's
        (d_model * d_kv) ** -0.5 times the sqrt(d_kv) folded into it."""
        c = self.config
        nn.init.normal_(self.shared.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=1.0 if c.tie_weights else c.n_embd ** -0.5)
        for bias in (self.enc_bias, self.dec_bias):
            nn.init.normal_(bias.table.weight, std=c.n_embd ** -0.5)
        for name, p in self.named_parameters():
            if name.endswith(("attn.qkv.weight", "cross.q.weight", "cross.kv.weight", "mlp.fc1.weight")):
                nn.init.normal_(p, std=c.n_embd ** -0.5)
            elif name.endswith(("attn.proj.weight", "cross.proj.weight")):
                nn.init.normal_(p, std=(c.n_head * c.head_dim) ** -0.5)
            elif name.endswith("mlp.fc2.weight"):
                nn.init.normal_(p, std=c.d_ff ** -0.5)

    def encode(self, input_ids, attention_mask=None) -> torch.Tensor:
        S = input_ids.shape[1]
        kpm = attention_mask.bool() if attention_mask is not None else None
        x = self.drop(self.shared(input_ids))
        return self.drop(self.encoder(x, key_padding_mask=kpm, attn_bias=self.enc_bias(S, S)))

    def decode(self, decoder_input_ids, memory, attention_mask=None, caches=None) -> torch.Tensor:
        T = decoder_input_ids.shape[1]
        start = caches[0].length if caches else 0
        bias = self.dec_bias(T, start + T, offset=start)  # (1, H, T, start + T)
        kpm = attention_mask.bool() if attention_mask is not None else None
        x = self.drop(self.shared(decoder_input_ids))
        h = self.drop(self.decoder(x, caches=caches, context=memory, context_mask=kpm, attn_bias=bias))
        if self.config.scale_output:
            h = h * self.config.n_embd ** -0.5
        return self.lm_head(h)

    def forward(self, input_ids, decoder_input_ids, attention_mask=None) -> torch.Tensor:
        return self.decode(decoder_input_ids, self.encode(input_ids, attention_mask), attention_mask)

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing decoder inputs: the start token (pad_id), then labels[:, :-1] (-100 -> pad_id)."""
        start = torch.full_like(labels[:, :1], self.config.pad_id)
        prev = labels[:, :-1]
        return torch.cat([start, prev.masked_fill(prev < 0, self.config.pad_id)], 1)  # (B, T)

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens: int, attention_mask=None) -> torch.Tensor:
        """Greedy decoding with a KV cache: (B, <= max_new_tokens) tokens after the start token; a row that
        produced eos_id is padded with pad_id, and decoding stops once every row has."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        c = self.config
        memory = self.encode(input_ids, attention_mask)
        B = input_ids.shape[0]
        caches = self.decoder.new_caches(B, max_new_tokens, memory.device, memory.dtype)
        token = torch.full((B, 1), c.pad_id, dtype=torch.long, device=input_ids.device)
        done = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
        out = []
        for _ in range(max_new_tokens):
            logits = self.decode(token, memory, attention_mask, caches)[:, -1]  # (B, V)
            token = logits.argmax(-1).masked_fill(done, c.pad_id)[:, None]  # (B, 1)
            out.append(token)
            done |= token[:, 0] == c.eos_id
            if done.all():
                break
        return torch.cat(out, 1)

    def example_inputs(self, batch_size: int = 2) -> dict:
        ids = torch.randint(2, self.config.vocab_size, (batch_size, 12))
        mask = torch.ones(batch_size, 12, dtype=torch.long)
        mask[0, 9:] = 0
        return {"input_ids": ids, "decoder_input_ids": torch.randint(0, self.config.vocab_size, (batch_size, 7)),
                "attention_mask": mask}


_BASE = T5Config()
register_preset("t5-test", _BASE.replace(vocab_size=256, n_embd=32, n_head=2, head_dim=16, d_ff=64, n_layer=2,
                                         n_decoder_layer=2, rel_buckets=8, rel_max_distance=20, dropout=0.0))
register_preset("t5-mini", _BASE.replace(vocab_size=4096, n_embd=256, n_head=4, head_dim=64, d_ff=683, n_layer=4,
                                         n_decoder_layer=2, dropout=0.0))  # recipes size vocab to the data
register_preset("t5-small", _BASE)  # t5-v1_1-small: 8 + 8 layers, d_model 512, 6 heads of 64, d_ff 1024
