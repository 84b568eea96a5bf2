"""One-token decoding through a plain (causal, unconditioned) Transformer stack.

At batch 1 a decode step is bound by reading the weights; what the module path adds on top (module
calls, mask and position bookkeeping, chunk/transpose views) is as large again at small widths. The
StackDecoder runs the same blocks with the same parameter tensors (nothing is copied, so in-place
optimizer updates are seen; build a new one per generate call) as a flat list of functional ops: each
linear is F.linear's own kernel (addmm / mm) on a transpose view taken once, residuals are added in place
into the fresh projection outputs, cache slots are written through `narrow`, and a key mask is made additive
once per step instead of by SDPA in every layer. It covers what GPT-style stacks use: LayerNorm or
RMSNorm, GELU, ReLU² or SwiGLU MLPs, QK-norm, learned or rotary positions, a KV cache and an optional key mask.

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


def _linear(linear: nn.Module):
    """x (B, C) -> F.linear(x, weight, bias), the same kernel (addmm, or mm without a bias), with the weight's
    transpose taken once: a 2-D F.linear calls `weight.t()` and then addmm/mm on every call."""
    w_t, b = linear.weight.t(), linear.bias
    if b is None:
        return lambda x: torch.mm(x, w_t)
    return lambda x: torch.addmm(b, x, w_t)


def _mlp_fn(mlp: nn.Module):
    fc1, fc2 = _linear(mlp.fc1), _linear(mlp.fc2)
    if isinstance(mlp, SwiGLU):  # and its GEGLU
        act = mlp.act

        def swiglu(x):
            gate, up = fc1(x).chunk(2, dim=-1)
            return fc2(act(gate) * up)
        return swiglu
    if isinstance(mlp.act, ReLUSquared):
        return lambda x: fc2(F.relu(fc1(x)).square())
    approximate = mlp.act.approximate  # F.gelu itself: one kernel beats GELU's in-place passes on (B, 4C) rows
    return lambda x: fc2(F.gelu(fc1(x), approximate=approximate))


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
        self.caches = caches  # read per step: a caller may swap a cache's tensors (mmfm.align.sampling)
        self.layers = [(_norm_fn(b.norm1), _linear(b.attn.qkv), _linear(b.attn.proj), _norm_fn(b.norm2),
                        _mlp_fn(b.mlp), b.attn.q_norm, b.attn.k_norm) for b in stack.blocks]
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
        mask = None
        if key_mask is not None:  # additive, once per step: SDPA would convert a bool mask in every layer
            mask = torch.where(key_mask[:, None, None, :pos + 1], 0.0, float("-inf")).to(x.dtype)  # (B, 1, 1, Tk)
        for (norm1, qkv_fn, proj, norm2, mlp, q_norm, k_norm), cache in zip(self.layers, self.caches):
            qkv = qkv_fn(norm1(x)).view(B, 3, H, 1, C // H)  # (B, 3, H, 1, Dh)
            q, k, v = qkv.unbind(1)  # (B, H, 1, Dh) each
            if q_norm is not None:
                q, k = q_norm(q), k_norm(k)
            if rope is not None:
                q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            if rope is None and q_norm is None and cache.kv is not None:
                cache.kv.narrow(3, pos, 1).copy_(qkv.narrow(1, 1, 2))  # keys and values in one copy: (B, 2, H, 1, Dh)
            else:
                cache.k.narrow(2, pos, 1).copy_(k)
                cache.v.narrow(2, pos, 1).copy_(v)
            cache.length = pos + 1
            y = F.scaled_dot_product_attention(q, cache.k.narrow(2, 0, pos + 1), cache.v.narrow(2, 0, pos + 1),
                                               attn_mask=mask)
            x = proj(y.view(B, C)).add_(x)  # (B, H, 1, Dh) -> (B, C); the residual added into the fresh output
            x = mlp(norm2(x)).add_(x)
        return self.norm(x)
