"""Multi-head attention on F.scaled_dot_product_attention with causal, bidirectional and
key-padding masks, rotary positions, cross-attention and an incremental KV cache."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .norm import RMSNorm
from .pos import rotate_heads


@dataclass
class KVCache:
    """Preallocated keys and values for one layer: (B, H, max_len, Dh); `length` are filled.
    `empty` keeps both in one buffer `kv` (B, 2, H, max_len, Dh), so that a decode step writes them at once."""

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0
    kv: torch.Tensor | None = None

    @classmethod
    def empty(cls, batch: int, n_heads: int, max_len: int, head_dim: int, device=None, dtype=None):
        kv = torch.zeros((batch, 2, n_heads, max_len, head_dim), device=device, dtype=dtype)
        return cls(kv[:, 0], kv[:, 1], kv=kv)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = k.shape[2]
        end = self.length + t
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache overflow: {end} positions > capacity {self.k.shape[2]}")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


def build_attn_mask(
    q_len: int, k_len: int, causal: bool, key_padding_mask: torch.Tensor | None, device
) -> torch.Tensor | None:
    """Boolean mask (B or 1, 1, q_len, k_len), True = attend. Queries are the last q_len keys."""
    mask = None
    if causal:
        q_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
        mask = (torch.arange(k_len, device=device)[None, :] <= q_pos)[None, None]  # (1, 1, Tq, Tk)
    if key_padding_mask is not None:
        kpm = key_padding_mask[:, None, None, :].bool()  # (B, 1, 1, Tk)
        mask = kpm if mask is None else (mask & kpm)
    return mask


class Attention(nn.Module):
    """Self-attention (or cross-attention when `kv_dim` is given); `head_dim` (default dim // n_heads) sets
    the heads' width when n_heads * head_dim differs from dim. `qk_norm`: an RMSNorm (learned gain per head
    channel) on every head's query and key before the rotation (OLMo 2, Qwen 3, modded-nanogpt).

    forward(x, key_padding_mask=None, rope=None, cache=None, context=None, attn_bias=None) -> (B, T, C)
    key_padding_mask: (B, Tk) bool, True for real tokens (Tk includes cached positions).
    attn_bias: float, broadcastable to (B, H, T, Tk), added to the attention scores (T5's relative positions).
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        causal: bool = False,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        kv_dim: int | None = None,
        head_dim: int | None = None,
        qk_norm: bool = False,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        if head_dim is None and dim % n_heads:
            raise ValueError(f"dim={dim} must be divisible by n_heads={n_heads}")
        self.n_heads, self.head_dim, self.causal = n_heads, head_dim or dim // n_heads, causal
        inner = n_heads * self.head_dim  # dim unless head_dim is given (T5 v1.1: 6 heads of 64 in width 512)
        self.is_cross = kv_dim is not None
        if self.is_cross:
            self.q = nn.Linear(dim, inner, bias=qkv_bias)
            self.kv = nn.Linear(kv_dim, 2 * inner, bias=qkv_bias)
        else:
            self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim, bias=proj_bias)
        self.q_norm = self.k_norm = None
        if qk_norm:
            self.q_norm, self.k_norm = RMSNorm(self.head_dim, norm_eps), RMSNorm(self.head_dim, norm_eps)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, N, Dh)

    def _qkv(self, x, rope):
        """q, k, v (B, H, T, Dh) each, q and k rotated by `rope` = (cos, sin), (T, Dh) or (B, 1, T, Dh): in one
        pass over the (B, T, 2, H, Dh) slice of the projection, before the heads are moved forward."""
        B, T, _ = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim)  # (B, T, 3, H, Dh)
        qk = qkv[:, :, :2]  # (B, T, 2, H, Dh)
        if self.q_norm is not None:
            qk = torch.stack([self.q_norm(qkv[:, :, 0]), self.k_norm(qkv[:, :, 1])], dim=2)  # (B, T, 2, H, Dh)
        if rope is not None:
            cos, sin = (t[:, None, None] if t.dim() == 2 else t[:, 0, :, None, None] for t in rope)  # (.., T, 1, 1, Dh)
            qk = rotate_heads(qk, cos, sin)  # (B, T, 2, H, Dh)
        return qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)

    def forward(self, x, key_padding_mask=None, rope=None, cache: KVCache | None = None, context=None,
                attn_bias=None):
        B, T, C = x.shape
        if self.is_cross:
            q = self._split(self.q(x))
            k, v = self.kv(context).chunk(2, dim=-1)
            k, v = self._split(k), self._split(v)
            causal = False
        else:
            q, k, v = self._qkv(x, rope)  # each (B, H, T, Dh)
            causal = self.causal
            if cache is not None:
                k, v = cache.append(k, v)
        Tk = k.shape[2]
        if attn_bias is None and key_padding_mask is None and (not causal or T == Tk or T == 1):
            # fast path: no explicit mask (a single new query may see every cached key)
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop if self.training else 0.0, is_causal=causal and T > 1
            )
        else:
            mask = build_attn_mask(T, Tk, causal, key_padding_mask, x.device)
            if attn_bias is not None:  # one additive float mask: the bias, and the minimum where masked
                bias = attn_bias.to(q.dtype)
                mask = bias if mask is None else bias.masked_fill(~mask, torch.finfo(q.dtype).min)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.attn_drop if self.training else 0.0
            )
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H * Dh)
        return self.proj_drop(self.proj(y))
