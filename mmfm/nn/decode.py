"""One-token decoding through a plain (causal, unconditioned) Transformer stack.

At batch 1 a decode step is bound by reading the weights; what the module path adds on top (module
calls, mask and position bookkeeping, chunk/transpose views) is as large again at small widths. The
StackDecoder runs the same blocks with the same parameter tensors (nothing is copied, so in-place
optimizer updates are seen; build a new one per generate call) as a flat list of functional ops. It
covers what GPT-style stacks use: LayerNorm or RMSNorm, GELU, ReLU² or SwiGLU MLPs, QK-norm, learned or
rotary positions, a KV cache and an optional key mask.

    dec = StackDecoder(model.transformer, caches)   # after the prompt was prefilled into `caches`
    h = dec.step(x, pos)                            # x (B, C): the new token's embedding at cache slot `pos`
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import KVCache
from .mlp import Mlp, ReLUSquared, SwiGLU
from .norm import RMSNorm
from .pos import apply_rotary


def _norm_fn(norm: nn.Module):
    if isinstance(norm, nn.Identity):
        return lambda x: x
    if isinstance(norm, nn.LayerNorm):
        shape, weight, bias, eps = norm.normalized_shape, norm.weight, norm.bias, norm.eps
        return lambda x: F.layer_norm(x, shape, weight, bias, eps)
    return norm.forward  # RMSNorm: already plain tensor ops


def _mlp_fn(mlp: nn.Module):
    w1, b1, w2, b2 = mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias
    if isinstance(mlp, SwiGLU):  # and its GEGLU
        act = mlp.act

        def swiglu(x):
            gate, up = F.linear(x, w1, b1).chunk(2, dim=-1)
            return F.linear(act(gate) * up, w2, b2)
        return swiglu
    if isinstance(mlp.act, ReLUSquared):
        return lambda x: F.linear(F.relu(F.linear(x, w1, b1)).square(), w2, b2)
    approximate = mlp.act.approximate  # F.gelu itself: one kernel beats GELU's in-place passes on (B, 4C) rows

    def gelu(x):
        return F.linear(F.gelu(F.linear(x, w1, b1), approximate=approximate), w2, b2)
    return gelu


class StackDecoder:
    """step(x (B, C), pos, positions=None, key_mask=None) -> final-normed hidden (B, C).

    pos: the cache slot of the new token (every row); positions (B,): per-row positions for learned or
    rotary embeddings when rows are left-padded (default: pos); key_mask (B, >= pos + 1) bool, True on
    real tokens. The step writes its keys and values into the caches at `pos`.
    """

    def __init__(self, stack: nn.Module, caches: list[KVCache]):
        if not self.supports(stack):
            raise ValueError("StackDecoder covers plain causal stacks in eval mode (no adaLN, cross-attention, "
                             "layer scale, drop path or dropout); use the module forward instead")
        self.n_heads = stack.cfg.n_heads
        self.layers = [(_norm_fn(b.norm1), b.attn.qkv.weight, b.attn.qkv.bias, b.attn.proj.weight, b.attn.proj.bias,
                        _norm_fn(b.norm2), _mlp_fn(b.mlp), c, b.attn.q_norm, b.attn.k_norm)
                       for b, c in zip(stack.blocks, caches)]
        self.norm = _norm_fn(stack.norm)
        self.rope = None
        if stack.rope is not None:  # cos/sin tables for every cache slot: (L, Dh) each
            self.rope = stack.rope(torch.arange(caches[0].k.shape[2], device=caches[0].k.device))

    @staticmethod
    def supports(stack: nn.Module) -> bool:
        cfg = getattr(stack, "cfg", None)
        if (cfg is None or not cfg.causal or stack.training or cfg.cond_dim is not None or cfg.post_norm
                or cfg.head_dim not in (None, cfg.dim // cfg.n_heads)):
            return False
        norms = (nn.LayerNorm, RMSNorm)
        return all(b.cross is None and isinstance(b.ls1, nn.Identity) and isinstance(b.drop_path, nn.Identity)
                   and (isinstance(b.mlp, SwiGLU)
                        or isinstance(b.mlp, Mlp) and isinstance(b.mlp.act, (nn.GELU, ReLUSquared)))
                   and isinstance(b.norm1, norms) and isinstance(b.norm2, norms)
                   for b in stack.blocks)

    def _rotary(self, pos: int, positions: torch.Tensor | None):
        cos, sin = self.rope
        if positions is None:
            return cos[pos], sin[pos]  # (Dh,) each: broadcast over (B, H, 1, Dh)
        return cos[positions][:, None, None], sin[positions][:, None, None]  # (B, 1, 1, Dh) each

    def step(self, x: torch.Tensor, pos: int, positions: torch.Tensor | None = None,
             key_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, C = x.shape
        H = self.n_heads
        rope = self._rotary(pos, positions) if self.rope is not None else None
        mask = key_mask[:, None, None, :pos + 1] if key_mask is not None else None  # (B, 1, 1, Tk)
        for norm1, w_qkv, b_qkv, w_proj, b_proj, norm2, mlp, cache, q_norm, k_norm in self.layers:
            qkv = F.linear(norm1(x), w_qkv, b_qkv).view(B, 3, H, 1, C // H)  # (B, 3, H, 1, Dh)
            q, k = qkv[:, 0], qkv[:, 1]
            if q_norm is not None:
                q, k = q_norm(q), k_norm(k)
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            if rope is None and q_norm is None and cache.kv is not None:
                cache.kv[:, :, :, pos:pos + 1] = qkv[:, 1:]  # keys and values in one copy: (B, 2, H, 1, Dh)
            else:
                cache.k[:, :, pos:pos + 1], cache.v[:, :, pos:pos + 1] = k, qkv[:, 2]
            cache.length = pos + 1
            y = F.scaled_dot_product_attention(q, cache.k[:, :, :pos + 1], cache.v[:, :, :pos + 1], attn_mask=mask)
            x = F.linear(y.view(B, C), w_proj, b_proj) + x  # (B, H, 1, Dh) -> (B, C)
            x = mlp(norm2(x)) + x
        return self.norm(x)
