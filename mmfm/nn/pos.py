"""Positions: learned absolute, fixed 2-D sin-cos, and rotary (RoPE). Resampling a learned 2-D table to another
grid is timm's `resample_abs_pos_embed` (see mmfm.models.vit.ViT._pos)."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class LearnedPosEmbed(nn.Module):
    """Learned absolute positions: forward(positions (B, T) or (T,)) -> (.., T, dim)."""

    def __init__(self, max_len: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(max_len, dim))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        if positions.max() >= self.weight.shape[0]:
            raise ValueError(f"position {int(positions.max())} >= max_len {self.weight.shape[0]}")
        return F.embedding(positions, self.weight)


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)  # (M, D/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, D)


def sincos_2d(dim: int, grid_h: int, grid_w: int | None = None) -> torch.Tensor:
    """Fixed 2-D sin-cos table (grid_h * grid_w, dim) as in MAE / DiT."""
    grid_w = grid_w or grid_h
    gw, gh = np.meshgrid(np.arange(grid_w, dtype=np.float32), np.arange(grid_h, dtype=np.float32))
    emb = np.concatenate([sincos_1d(dim // 2, gh), sincos_1d(dim // 2, gw)], axis=1)  # (H*W, D)
    return torch.from_numpy(emb).float()


class RotaryEmbedding(nn.Module):
    """RoPE tables: forward(positions (B, T) or (T,)) -> (cos, sin) shaped to broadcast over heads.

    `span(start, length, device, dtype)` gives the same tables for positions start..start+length-1 as views of
    a table cached per device and dtype (grown on demand, never saved): the path of every forward without
    explicit positions, so a training step computes no cos/sin and casts nothing."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cache: dict = {}  # (device, dtype) -> (cos, sin), each (L, Dh)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[..., None] * self.inv_freq  # (.., T, Dh/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (.., T, Dh)
        if emb.dim() == 3:
            emb = emb[:, None]  # (B, 1, T, Dh)
        return emb.cos(), emb.sin()

    def span(self, start: int, length: int, device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (length, Dh), for positions start..start+length-1 (start >= 0): equal to
        forward(arange(start, start + length)) cast to `dtype` (default float32)."""
        device = torch.device(device) if device is not None else self.inv_freq.device
        key, end = (device, dtype or torch.float32), start + length
        table = self._cache.get(key)
        if table is None or table[0].shape[0] < end or table[0].device != device:
            size = max(end, 2 * table[0].shape[0] if table is not None else 256)
            with torch.inference_mode(False), torch.no_grad():  # a table first made by generate serves training too
                cos, sin = self(torch.arange(size, device=device))
                table = self._cache[key] = (cos.to(key[1]), sin.to(key[1]))
        return table[0][start:end], table[1][start:end]

    def _apply(self, fn, recurse=True):  # .to(), .half(), ...: tables are rebuilt from the moved inv_freq
        self._cache = {}
        return super()._apply(fn, recurse)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, H, T, Dh); rotate-half formulation (GPT-NeoX / Llama)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


def rotate_heads(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """apply_rotary's rotation in three kernels and no concatenation, for x (.., Dh) and cos/sin broadcastable to
    it: out = x * cos; out[:h] -= x2 * sin[:h]; out[h:] += x1 * sin[h:] (sin's halves are equal). Used on
    the (B, T, 2, H, Dh) slice of q and k together, straight out of the qkv projection."""
    h = x.shape[-1] // 2
    s = sin[..., :h].to(x.dtype)
    out = x * cos.to(x.dtype)
    out[..., :h].addcmul_(x[..., h:], s, value=-1.0)
    out[..., h:].addcmul_(x[..., :h], s)
    return out


def timestep_frequencies(t: torch.Tensor, dim: int, max_period: float = 10000.0, freq_shift: int = 0) -> torch.Tensor:
    """Sinusoidal features of (possibly fractional) timesteps: (N,) -> (N, dim), [cos | sin] at frequencies
    max_period^(-i / (half - freq_shift)); 0 is the DiT paper's, 1 diffusers' DiT (its downscale_freq_shift)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / (half - freq_shift))
    args = t[:, None].float() * freqs[None]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb
