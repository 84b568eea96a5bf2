"""KV-cache decoding past block_size: the next-token logits of `generate` once prompt + new tokens outgrow the
model's context window W = block_size, without recomputing the whole window for every token.

    rolling (rotary positions): a rolling KV cache. Every token attends to the last W tokens (keys of real
        tokens only), exactly as a forward pass with a banded causal mask of width W would compute it:
        keys keep the rotation of their own position, and rotary scores depend only on the distance.
        The cache holds W + W/4 slots; when it is full, the last W - 1 entries move to its front, keys
        rotated back by the shift, so that a slot's position stays the slot (minus a row's left padding).
    refill (learned positions): positions cannot pass W - 1, so the window moves in chunks. Once the next
        token would need position W, the cache is refilled with the last W/2 tokens (positions from 0)
        in one prefill pass, and decoding continues until the window is full again: each token sees
        between W/2 and W tokens, counted from its chunk's start, with positions recounted as in training.

A prompt longer than W is cut to its last W tokens (per row: rows are left-padded). Both plans equal their
reference computation (tests/test_generation_window.py); the cacheless `use_cache=False` path keeps
re-running the last W tokens for every token.
"""
from __future__ import annotations

import torch

from ..nn.pos import apply_rotary


def plan(model, T0: int, N: int, use_cache: bool) -> str | None:
    """'rolling' or 'refill' when a cached decode must pass block_size and the model has a one-token decoder."""
    if not use_cache or T0 + N <= model.config.block_size or getattr(model, "decoder", None) is None:
        return None
    return "rolling" if getattr(model.config, "pos", "learned") == "rope" else "refill"


class WindowedDecode:
    """next_logits(n, cur) -> logits (B, V) of the token at column `cur` of `seq` (step n = 1, 2, ...)."""

    def __init__(self, model, seq: torch.Tensor, mask: torch.Tensor, T0: int, N: int, kind: str, step_logits):
        self.model, self.seq, self.mask, self.kind, self.step_logits = model, seq, mask, kind, step_logits
        self.W = W = model.config.block_size
        self.base = max(0, T0 - W)  # column of cache slot 0
        cap = W + max(1, W // 4) if kind == "rolling" else W
        cap = min(cap, T0 + N - self.base)
        p = next(model.parameters())
        self.caches = model.transformer.new_caches(seq.shape[0], cap, p.device, p.dtype)
        self.cap, self.dec = cap, model.decoder(self.caches)
        self.keys = torch.ones((seq.shape[0], cap), dtype=torch.bool, device=seq.device)  # (B, cap) attendable slots

    @property
    def usable(self) -> bool:
        return self.dec is not None

    def prefill(self, cur: int) -> torch.Tensor:
        """Run columns base..cur-1 into emptied caches; logits of the token at `cur`."""
        for c in self.caches:
            c.length = 0
        window = self.mask[:, self.base:cur]  # (B, t)
        self.padded = not bool(window.all())
        self.offset = (~window).sum(1)  # (B,) left padding inside the window: position = slot - offset
        self.keys.fill_(True)
        self.keys[:, :window.shape[1]] = window
        return self.step_logits(self.model, self.seq[:, self.base:cur], window, self.caches, cur - self.base,
                                self.padded)

    def _shift(self) -> None:
        """Move the last W - 1 cache entries to the front; keys rotated back by the shift (rolling only)."""
        keep = self.W - 1
        src = self.cap - keep
        cos, sin = self.model.transformer.rope(torch.tensor([-src], device=self.keys.device))  # (1, Dh) each
        for c in self.caches:
            k = c.k[:, :, src:self.cap].clone()  # (B, H, keep, Dh)
            c.v[:, :, :keep] = c.v[:, :, src:self.cap].clone()
            c.k[:, :, :keep] = apply_rotary(k, cos, sin)
            c.length = keep
        self.keys[:, :keep] = self.keys[:, src:].clone()
        self.keys[:, keep:] = True
        self.base += src

    def next_logits(self, n: int, cur: int) -> torch.Tensor:
        if n == 1:
            return self.prefill(cur)
        if self.kind == "refill" and cur - self.base > self.W:  # position W would be needed: refill
            self.base = cur - self.W // 2
            return self.prefill(cur)
        if self.kind == "rolling" and cur - 1 - self.base == self.cap:
            self._shift()
        slot = cur - 1 - self.base  # the cache slot of the token fed now (column cur - 1)
        if slot >= self.W:  # the key W slots back leaves the window
            self.keys[:, slot - self.W] = False
        tokens = self.seq[:, cur - 1]
        if not self.padded and slot < self.W:
            return self.dec(tokens, slot)
        return self.dec(tokens, slot, slot - self.offset, self.keys)
