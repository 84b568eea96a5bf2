"""Exponential moving average of a LightningModule's `model` as a Lightning callback.

The shadow copy lives on the callback (`ema.model`), is updated after every optimizer step with
decay_t = min(decay, (1 + n) / (10 + n)) (a warm-up so short runs are not dominated by the init), and
is saved in / restored from Lightning checkpoints.
"""
from __future__ import annotations

import copy

import lightning as L
import torch


class EMA(L.Callback):
    def __init__(self, decay: float = 0.999, attr: str = "model", warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.attr, self.warmup = decay, attr, warmup
        self.model: torch.nn.Module | None = None
        self.updates = 0
        self._pending_state: dict | None = None

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def _ensure(self, pl_module) -> None:
        if self.model is None:
            self.model = copy.deepcopy(getattr(pl_module, self.attr)).eval().requires_grad_(False)
            if self._pending_state is not None:
                self.model.load_state_dict(self._pending_state)
                self._pending_state = None

    def on_fit_start(self, trainer, pl_module):
        self._ensure(pl_module)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.current_decay()
        ema_p = [p for p in self.model.parameters()]
        new_p = [p.detach().to(e.dtype) for p, e in zip(model.parameters(), ema_p)]
        torch._foreach_lerp_(ema_p, new_p, 1.0 - d)  # e = d * e + (1 - d) * p
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)
        self.updates += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._ensure(pl_module)
        self.update(getattr(pl_module, self.attr))

    def state_dict(self):
        return {"updates": self.updates, "decay": self.decay,
                "model": None if self.model is None else self.model.state_dict()}

    def load_state_dict(self, state):
        self.updates, self.decay = state["updates"], state["decay"]
        if state["model"] is not None:
            if self.model is None:
                self._pending_state = state["model"]
            else:
                self.model.load_state_dict(state["model"])
