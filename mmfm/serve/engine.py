"""Continuous batching for GPT generation: a background thread decodes every running sequence in one ragged
KV-cache step; waiting requests are prefilled together and join between steps, finished ones leave.

    engine = Engine(model, max_batch=32)
    handle = engine.submit(Job(prompt_ids, max_tokens=50, temperature=0.0, on_token=f, on_finish=g))

The cache is one buffer per layer, (rows, 2, H, slots, Dh). Every running row feeds its next token at the
same cache slot `cur`; a row's prompt sits right-aligned before the slot it joined at, left of it is masked
padding, and its positions count from its own first slot (`start`), so each row decodes as it would alone.
Rows that finish free their row for the next request; the buffer is re-laid out (compacted to the oldest
running row, grown when needed) only when a joining request does not fit.
"""
from __future__ import annotations

import collections
import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..models.generation import left_pad, sample_next
from ..nn.attention import KVCache
from .batcher import Worker

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One sequence to generate. `on_token(id) -> bool` (True: stop here) and `on_finish(reason)` ("stop",
    "length", "cancelled" or "error") are called from the engine thread."""

    prompt: list[int]
    max_tokens: int
    on_token: Callable[[int], bool]
    on_finish: Callable[[str], None]
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    cancelled: bool = False
    generated: int = 0
    generator: torch.Generator | None = field(default=None, repr=False)

    def cancel(self) -> None:
        self.cancelled = True


class Engine(Worker):
    """Continuous batching over a GPT (`model.transformer.new_caches`, `model.decoder`); `max_batch` rows at most
    decode together (1: one request at a time)."""

    def __init__(self, model, max_batch: int = 32, max_waiting: int = 4096):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        super().__init__()
        self.name = "mmfm-engine"
        self.model, self.max_batch, self.max_waiting = model.eval(), max_batch, max_waiting
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self._waiting: collections.deque[Job] = collections.deque()
        self.steps = 0  # decode steps taken (stats)
        self._reset_buffers()

    # --- public ---------------------------------------------------------------------------------------------
    def submit(self, job: Job) -> Job:
        """Queue a job (the engine thread starts on first use); a full queue is a RuntimeError."""
        with self._cv:
            if len(self._waiting) >= self.max_waiting:
                raise RuntimeError(f"the generation queue is full ({self.max_waiting} waiting requests)")
            if job.seed is not None:
                job.generator = torch.Generator(device="cpu").manual_seed(job.seed % 2**63)
            self._waiting.append(job)
            self._wake()
        return job

    def stats(self) -> dict:
        return {"running": sum(r is not None for r in self._rows), "waiting": len(self._waiting), "steps": self.steps}

    # --- the loop -------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._waiting and not any(self._rows):
                    self._cv.wait()
                if self._stop:
                    break
                free = self.max_batch - sum(r is not None for r in self._rows)
                joining = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
            try:
                with torch.inference_mode():
                    if joining:
                        self._admit(joining)
                    if any(self._rows):
                        self._step()
            except Exception:  # a bug must not kill the worker: fail the running jobs, start over
                log.exception("generation step failed; the running requests end with an error")
                for job in [*joining, *(r for r in self._rows if r is not None)]:
                    self._finish(job, "error")
                self._reset_buffers()
        for job in [*self._waiting, *(r for r in self._rows if r is not None)]:
            self._finish(job, "cancelled")

    def _finish(self, job: Job, reason: str) -> None:
        try:
            job.on_finish("cancelled" if job.cancelled else reason)
        except Exception:
            log.exception("on_finish callback failed")

    def _emit(self, job: Job, token: int) -> bool:
        """Hand a new token to the job; True when the job is done (stopped, out of tokens or cancelled)."""
        job.generated += 1
        try:
            stop = job.on_token(token)
        except Exception:
            log.exception("on_token callback failed")
            job.cancelled = True
            stop = True
        if stop or job.cancelled:
            self._finish(job, "stop")
            return True
        if job.generated >= job.max_tokens:
            self._finish(job, "length")
            return True
        return False

    def _sample(self, logits: torch.Tensor, jobs: list[Job | None]) -> list[int]:
        """One token per row of logits (B, V): greedy rows in one argmax, sampled rows each with their generator."""
        out = logits.argmax(-1).tolist()
        for i, job in enumerate(jobs):
            if job is not None and job.temperature > 0:
                out[i] = int(sample_next(logits[i:i + 1], job.temperature, None,
                                         job.top_p if job.top_p < 1 else None, job.generator))
        return out

    # --- joining: prefill, then place into free rows --------------------------------------------------------
    def _admit(self, jobs: list[Job]) -> None:
        for job in (j for j in jobs if j.cancelled):
            self._finish(job, "cancelled")
        jobs = [j for j in jobs if not j.cancelled]
        if not jobs:
            return
        ids, mask = left_pad([j.prompt for j in jobs], 0, self.device)  # (k, T0) each
        k, T0 = ids.shape
        caches = self.model.transformer.new_caches(k, T0, self.device, self.dtype)
        if bool(mask.all()):
            logits = self.model(ids, caches=caches)[:, -1]
        else:
            positions = (mask.long().cumsum(1) - 1).clamp(min=0)  # (k, T0)
            logits = self.model(ids, key_padding_mask=mask, positions=positions, caches=caches)[:, -1]
        first = self._sample(logits.float(), jobs)
        keep = [i for i, (j, t) in enumerate(zip(jobs, first)) if not self._emit(j, t)]
        if not keep:
            return
        self._reserve(len(keep), T0, max(jobs[i].max_tokens - jobs[i].generated for i in keep))
        free = [r for r, job in enumerate(self._rows) if job is None][:len(keep)]
        rows = torch.tensor(free, device=self.device)
        src = torch.tensor(keep, device=self.device)
        lo = self.cur - T0
        for buf, c in zip(self._kv, caches):
            buf[rows, 0, :, lo:self.cur] = c.k[src]
            buf[rows, 1, :, lo:self.cur] = c.v[src]
        self._mask[rows, :lo] = False
        self._mask[rows, lo:self.cur] = mask[src]
        self._start[rows] = self.cur - mask[src].sum(1)
        self._last[rows] = torch.tensor([first[i] for i in keep], device=self.device)
        for r, i in zip(free, keep):
            self._rows[r] = jobs[i]

    def _live(self) -> list[int]:
        return [r for r, job in enumerate(self._rows) if job is not None]

    def _reserve(self, k: int, T0: int, ahead: int) -> None:
        """Make room for k new rows whose prompts take T0 slots before `cur` and that feed up to `ahead` more."""
        live = self._live()
        need_ahead = max([ahead] + [self._rows[r].max_tokens - self._rows[r].generated for r in live])
        rows_ok = self._kv[0].shape[0] - len(live) >= k if self._kv else False
        width_ok = bool(self._kv) and self.cur + need_ahead <= self._kv[0].shape[3]
        if rows_ok and width_ok and T0 <= self.cur:
            return
        self._relayout(live, k, T0, need_ahead)

    def _relayout(self, live: list[int], k: int, T0: int, ahead: int) -> None:
        """New buffers: running rows compacted to the top rows and to the oldest running row's first slot."""
        lo = int(self._start[live].min()) if live else self.cur
        history = self.cur - lo
        cur = max(history, T0)
        width = cur + ahead
        n_rows = min(self.max_batch, 2 ** math.ceil(math.log2(len(live) + k)))
        rows = max(n_rows, self._kv[0].shape[0] if self._kv else 0)
        slots = width + width // 4 + 1  # room to decode a while before the next relayout
        cfg = self.model.transformer.cfg
        H, Dh = cfg.n_heads, cfg.dim // cfg.n_heads
        new_kv = [torch.zeros((rows, 2, H, slots, Dh), device=self.device, dtype=self.dtype)
                  for _ in self.model.transformer.blocks]
        new_mask = torch.zeros((rows, slots), dtype=torch.bool, device=self.device)
        new_start = torch.zeros(rows, dtype=torch.long, device=self.device)
        new_last = torch.zeros(rows, dtype=torch.long, device=self.device)
        if live:
            src, n = torch.tensor(live, device=self.device), len(live)
            shift = cur - self.cur  # every slot index moves by this much
            for new, old in zip(new_kv, self._kv):
                new[:n, :, :, lo + shift:cur] = old[src, :, :, lo:self.cur]
            new_mask[:n, lo + shift:cur] = self._mask[src, lo:self.cur]
            new_start[:n], new_last[:n] = self._start[src] + shift, self._last[src]
        self._rows = [self._rows[r] for r in live] + [None] * (rows - len(live))
        self._kv, self._mask, self._start, self._last, self.cur = new_kv, new_mask, new_start, new_last, cur
        self._decoder = None
        log.debug("engine relayout: %d rows x %d slots, cur %d", rows, slots, cur)

    def _reset_buffers(self) -> None:
        self._rows: list[Job | None] = []
        self._kv: list[torch.Tensor] = []
        self._mask = self._start = self._last = None
        self.cur, self._decoder = 0, None

    # --- one decode step for every running row --------------------------------------------------------------
    def _step_fn(self, n: int):
        """logits (n, V) of the tokens fed at slot `cur`, through the model's fast decoder when it has one."""
        caches = [KVCache(b[:n, 0], b[:n, 1], length=self.cur, kv=b[:n]) for b in self._kv]
        make = getattr(self.model, "decoder", None)
        dec = make(caches) if make is not None else None
        if dec is not None:
            return lambda tokens, pos, positions, mask: dec(tokens, pos, positions, mask)

        def module_step(tokens, pos, positions, mask):
            for c in caches:
                c.length = pos
            return self.model(tokens[:, None], key_padding_mask=mask[:, :pos + 1], positions=positions[:, None],
                              caches=caches)[:, -1]
        return module_step

    def _step(self) -> None:
        for r, job in enumerate(self._rows):  # cancelled rows leave before the step
            if job is not None and job.cancelled:
                self._finish(job, "cancelled")
                self._rows[r] = None
        live = self._live()
        if not live:
            return
        n = live[-1] + 1
        if self._decoder is None or self._decoder[0] != n:
            self._decoder = (n, self._step_fn(n))
        pos = self.cur
        self._mask[:n, pos] = True
        logits = self._decoder[1](self._last[:n], pos, pos - self._start[:n], self._mask[:n]).float()
        self.cur += 1
        self.steps += 1
        tokens = self._sample(logits, self._rows[:n])
        self._last[:n] = torch.tensor(tokens, device=self.device)
        for r in live:
            if self._emit(self._rows[r], tokens[r]):
                self._rows[r] = None
