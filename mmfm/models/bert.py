"""BERT: token + learned position + token-type embeddings, a bidirectional (post- or pre-norm) stack, an MLM
head tied to the token embeddings, and (with num_labels > 0) a pooled [CLS] classification head."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig, check, opt
from ..nn import StackConfig, Transformer, build_norm
from ..registry import register_family, register_preset
from .base import Model, init_linear_normal, stack_params


@dataclass
class BERTConfig(ModelConfig):
    family = "bert"
    vocab_size: int = opt(30522, lo=1)
    max_len: int = opt(512, lo=1)  # learned positions
    type_vocab_size: int = opt(2, lo=1)
    n_layer: int = opt(12, lo=1)
    n_head: int = opt(12, lo=1)
    n_embd: int = opt(768, lo=1)
    d_ff: int = opt(3072, lo=1)
    mlp: str = opt("gelu", choices=("gelu", "gelu_tanh"))
    norm_eps: float = opt(1e-12, lo=0.0)
    post_norm: bool = True  # BERT's original order; False: pre-norm with a final norm
    dropout: float = opt(0.1, lo=0.0, hi=1.0)
    num_labels: int = opt(0, lo=0)  # >0: a pooler (dense + tanh on [CLS]) and a classifier
    pad_id: int = opt(0, lo=0)
    mask_id: int = opt(103, lo=0)  # the [MASK] token (MLM objectives read it from here)

    def validate(self):
        super().validate()
        check(self.n_embd % self.n_head == 0, f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        check(self.pad_id < self.vocab_size and self.mask_id < self.vocab_size,
              f"pad_id={self.pad_id} and mask_id={self.mask_id} must be < vocab_size={self.vocab_size}")

    def estimate_params(self) -> int:
        c = self.n_embd
        emb = (self.vocab_size + self.max_len + self.type_vocab_size) * c
        head = c * c + self.vocab_size + (c * c + c * self.num_labels if self.num_labels else 0)
        return emb + head + stack_params(c, self.n_layer, self.d_ff / c)

    def stack(self) -> StackConfig:
        return StackConfig(self.n_embd, self.n_layer, self.n_head, self.d_ff / self.n_embd, self.mlp, "layernorm",
                           self.norm_eps, causal=False, dropout=self.dropout, final_norm=not self.post_norm,
                           post_norm=self.post_norm, mlp_hidden=self.d_ff)


class MLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> the (tied) token embedding matrix + a bias: (B, T, C) -> (B, T, V)."""

    def __init__(self, dim: int, vocab_size: int, eps: float, approximate: str = "none"):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))
        self.approximate = approximate

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.dense(h), approximate=self.approximate))
        return F.linear(h, embedding, self.bias)


@register_family
class BERT(Model):
    """forward(input_ids (B, T), attention_mask=None (B, T), token_type_ids=None (B, T)) -> MLM logits (B, T, V).

    encode(...) -> hidden states (B, T, C); embed(...) -> mean-pooled sentence embeddings (B, C);
    classify(...) -> class logits (B, num_labels) from the pooled [CLS] state (needs num_labels > 0).
    attention_mask: 1/True on real tokens, 0/False on padding (padded keys are never attended).
    """

    config_class = BERTConfig

    def __init__(self, config: BERTConfig):
        super().__init__(config)
        c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.max_len, c.n_embd)
        self.wtt = nn.Embedding(c.type_vocab_size, c.n_embd)
        self.emb_norm = nn.LayerNorm(c.n_embd, eps=c.norm_eps)
        self.drop = nn.Dropout(c.dropout)
        self.transformer = Transformer(c.stack())
        self.mlm = MLMHead(c.n_embd, c.vocab_size, c.norm_eps, "tanh" if c.mlp == "gelu_tanh" else "none")
        self.pooler = nn.Linear(c.n_embd, c.n_embd) if c.num_labels else None
        self.classifier = nn.Linear(c.n_embd, c.num_labels) if c.num_labels else None
        self.init_weights()

    def init_weights(self):
        self.apply(init_linear_normal)
        for m in self.modules():
            if isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.mlm.bias)

    def encode(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        B, T = input_ids.shape
        if T > self.config.max_len:
            raise ValueError(f"input_ids has {T} tokens, more than max_len={self.config.max_len}")
        x = self.wte(input_ids) + self.wpe.weight[:T]  # (B, T, C)
        x = x + (self.wtt(token_type_ids) if token_type_ids is not None else self.wtt.weight[0])
        x = self.drop(self.emb_norm(x))
        kpm = attention_mask.bool() if attention_mask is not None else None
        return self.transformer(x, key_padding_mask=kpm)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        return self.mlm(self.encode(input_ids, attention_mask, token_type_ids), self.wte.weight)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """BERT's pooler: tanh(dense(hidden[:, 0])) -> (B, C)."""
        if self.pooler is None:
            raise ValueError("this BERT has no pooler/classifier; build it with num_labels > 0")
        return torch.tanh(self.pooler(hidden[:, 0]))

    def classify(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        pooled = self.pool(self.encode(input_ids, attention_mask, token_type_ids))
        return self.classifier(self.drop(pooled))

    def embed(self, input_ids, attention_mask=None, token_type_ids=None) -> torch.Tensor:
        """Mean of the final hidden states over real tokens: (B, C)."""
        h = self.encode(input_ids, attention_mask, token_type_ids)
        if attention_mask is None:
            return h.mean(1)
        m = attention_mask.to(h.dtype).unsqueeze(-1)  # (B, T, 1)
        return (h * m).sum(1) / m.sum(1).clamp_min(1)

    def example_inputs(self, batch_size: int = 2) -> dict:
        T = min(16, self.config.max_len)
        ids = torch.randint(0, self.config.vocab_size, (batch_size, T))
        mask = torch.ones(batch_size, T, dtype=torch.long)
        mask[0, T - 3:] = 0  # one padded row
        types = torch.zeros(batch_size, T, dtype=torch.long)
        types[:, T // 2:] = self.config.type_vocab_size - 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def with_classifier(bert: BERT, num_labels: int) -> BERT:
    """A copy of `bert` (encoder and MLM head weights kept) with a fresh pooler and `num_labels`-way classifier."""
    out = BERT(bert.config.replace(num_labels=num_labels))
    missing, unexpected = out.load_state_dict(
        {k: v for k, v in bert.state_dict().items() if not k.startswith(("pooler.", "classifier."))}, strict=False)
    check(not unexpected and all(k.startswith(("pooler.", "classifier.")) for k in missing),
          f"weights did not match: missing {missing}, unexpected {unexpected}")
    out.tokenizer = bert.tokenizer
    return out


_BASE = BERTConfig()
register_preset("bert-test", _BASE.replace(vocab_size=256, max_len=64, n_layer=2, n_head=2, n_embd=32, d_ff=64,
                                           dropout=0.0, mask_id=4))
register_preset("bert-mini", _BASE.replace(vocab_size=4097, max_len=128, n_layer=4, n_head=4, n_embd=256, d_ff=1024,
                                           dropout=0.0, post_norm=False, mask_id=4096))  # recipes: vocab from the data
register_preset("bert-base", _BASE)  # bert-base-uncased: 12 x 768, 110M parameters
