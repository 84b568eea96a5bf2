"""The one pre-norm Transformer Block and stack behind GPT, ViT, CLIP and DiT.

Block(x) = x + attn(norm1(x)) [+ cross(norm_x(x), context)] + mlp(norm2(x)); with a condition
vector `c` (cond_dim set) the two main sub-layers are adaLN-Zero modulated and gated. With `post_norm`
(the original Transformer and BERT) each sub-layer's norm follows its residual sum instead:
x = norm1(x + attn(x)); x = norm2(x + mlp(x)).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from timm.layers import DropPath

from .attention import Attention, KVCache
from .mlp import build_mlp
from .modulation import AdaLN, modulate
from .norm import build_norm
from .pos import RotaryEmbedding


@dataclass
class StackConfig:
    """Shape of a Transformer stack; each model config produces one."""

    dim: int
    depth: int
    n_heads: int
    mlp_ratio: float = 4.0
    mlp: str = "gelu"
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    causal: bool = False
    bias: bool = True
    dropout: float = 0.0
    drop_path: float = 0.0
    cond_dim: int | None = None  # adaLN-Zero conditioning width
    context_dim: int | None = None  # cross-attention width
    rope: bool = False
    rope_base: float = 10000.0
    final_norm: bool = True
    ls_init: float | None = None  # layer-scale init (None: off)
    post_norm: bool = False  # norm after each residual sum (BERT) instead of before each sub-layer
    mlp_hidden: int | None = None  # the MLP's inner width (None: int(dim * mlp_ratio))
    head_dim: int | None = None  # attention head width (None: dim // n_heads)
    qk_norm: bool = False  # RMSNorm on every head's query and key before attention


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(init * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, cfg: StackConfig, drop_path: float = 0.0):
        super().__init__()
        dim, affine = cfg.dim, cfg.cond_dim is None  # adaLN supplies the affine part
        self.norm1 = build_norm(cfg.norm, dim, cfg.norm_eps, affine=affine, bias=cfg.bias)
        self.attn = Attention(dim, cfg.n_heads, cfg.causal, qkv_bias=cfg.bias, proj_bias=cfg.bias,
                              attn_drop=cfg.dropout, proj_drop=cfg.dropout, head_dim=cfg.head_dim,
                              qk_norm=cfg.qk_norm, norm_eps=cfg.norm_eps)
        self.norm2 = build_norm(cfg.norm, dim, cfg.norm_eps, affine=affine, bias=cfg.bias)
        hidden = cfg.mlp_hidden or int(dim * cfg.mlp_ratio)
        self.mlp = build_mlp(cfg.mlp, dim, hidden, bias=cfg.bias, drop=cfg.dropout)
        self.cross = None
        if cfg.context_dim is not None:
            self.norm_x = build_norm(cfg.norm, dim, cfg.norm_eps, bias=cfg.bias)
            self.cross = Attention(dim, cfg.n_heads, qkv_bias=cfg.bias, proj_bias=cfg.bias, kv_dim=cfg.context_dim,
                                   head_dim=cfg.head_dim)
        self.ada = AdaLN(cfg.cond_dim, dim, 6) if cfg.cond_dim is not None else None
        ls = (lambda: LayerScale(dim, cfg.ls_init)) if cfg.ls_init else nn.Identity
        self.ls1, self.ls2 = ls(), ls()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.post_norm = cfg.post_norm
        if cfg.post_norm and cfg.cond_dim is not None:
            raise ValueError("post_norm blocks take no adaLN condition (cond_dim)")

    def forward(self, x, c=None, key_padding_mask=None, rope=None, cache=None, context=None, context_mask=None,
                attn_bias=None):
        if self.post_norm:
            y = self.attn(x, key_padding_mask, rope, cache, attn_bias=attn_bias)
            x = self.norm1(x + self.drop_path(self.ls1(y)))
            if self.cross is not None:
                x = self.norm_x(x + self.cross(x, context_mask, context=context))
            return self.norm2(x + self.drop_path(self.ls2(self.mlp(x))))
        if self.ada is None:
            h = self.norm1(x)
            x = x + self.drop_path(self.ls1(self.attn(h, key_padding_mask, rope, cache, attn_bias=attn_bias)))
            if self.cross is not None:
                x = x + self.cross(self.norm_x(x), context_mask, context=context)
            return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c)  # each (B, C)
        h = modulate(self.norm1(x), shift1, scale1)
        x = torch.addcmul(x, gate1.unsqueeze(1), self.drop_path(self.attn(h, key_padding_mask, rope, cache,
                                                                          attn_bias=attn_bias)))
        if self.cross is not None:
            x = x + self.cross(self.norm_x(x), context_mask, context=context)
        h = modulate(self.norm2(x), shift2, scale2)
        return torch.addcmul(x, gate2.unsqueeze(1), self.drop_path(self.mlp(h)))  # x + gate * mlp(h), fused


class Transformer(nn.Module):
    """A stack of Blocks (+ optional final norm). Embeddings and heads live in the models.

    forward(x (B, T, C), c=None (B, cond_dim), key_padding_mask=None (B, Tk),
            positions=None (B, T) or (T,) for RoPE, caches=None (list of KVCache), context=None,
            context_mask=None (B, Tc), attn_bias=None (float, to (B, H, T, Tk)): added to every self-attention)
    """

    def __init__(self, cfg: StackConfig):
        super().__init__()
        self.cfg = cfg
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # stochastic depth ramp
        self.blocks = nn.ModuleList([Block(cfg, r) for r in rates])
        self.rope = RotaryEmbedding(cfg.head_dim or cfg.dim // cfg.n_heads, cfg.rope_base) if cfg.rope else None
        self.norm = build_norm(cfg.norm, cfg.dim, cfg.norm_eps, bias=cfg.bias) if cfg.final_norm else nn.Identity()

    def new_caches(self, batch: int, max_len: int, device=None, dtype=None) -> list[KVCache]:
        h = self.cfg.n_heads
        dh = self.cfg.head_dim or self.cfg.dim // h
        return [KVCache.empty(batch, h, max_len, dh, device, dtype) for _ in self.blocks]

    def forward(self, x, c=None, key_padding_mask=None, positions=None, caches=None, context=None,
                context_mask=None, attn_bias=None):
        rope = None
        if self.rope is not None:
            if positions is None:  # cached tables, in the dtype q and k will have
                dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
                rope = self.rope.span(caches[0].length if caches else 0, x.shape[1], x.device, dtype)
            else:
                rope = self.rope(positions)
        for i, blk in enumerate(self.blocks):
            x = blk(x, c, key_padding_mask, rope, caches[i] if caches else None, context, context_mask, attn_bias)
        return self.norm(x)
