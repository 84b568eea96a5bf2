"""Exponential moving average of a LightningModule's `model` as a Lightning callback.

The shadow copy lives on the callback (`ema.model`), is updated after every optimizer step with
decay_t = min(decay, (1 + n) / (10 + n)) (a warm-up so short runs are not dominated by the init), and
is saved in / restored from Lightning checkpoints.

Why not Lightning's weight averaging (lightning.pytorch.callbacks.WeightAveraging / EMAWeightAveraging, on
torch.optim.swa_utils.AveragedModel), considered in issue 13; tests/test_ema_swap.py shows all but the GPU point:
- EMAWeightAveraging has no warm-up: its first update copies the weights, later ones use the constant decay, so
  a DiT run's EMA (and its samples and FID) would change. WeightAveraging(multi_avg_fn=...) can be given the
  warm-up (the test does it, with equal numbers), but then:
- it builds the average in setup(), before the strategy moves the module to its device (Trainer._run calls the
  setup hook before strategy.setup): on a GPU the average stays on the CPU and every step copies all weights to
  the host unless a device is passed. It calls configure_model() itself and warns on every run for a task that
  overrides it (mmfm.train.strategies.ShardedTask, the FSDP2 tasks; its docs: sharded models do not work with it);
- it averages the whole LightningModule (a deep copy of the task, frozen conditioners included) and, at the end
  of fit, overwrites the trained weights with the average;
- its checkpoints hold the average under "state_dict" and the trained weights under "current_model_state",
  so every DiT checkpoint changes layout, and resuming a checkpoint written with this callback under Lightning's
  would restart the average from the trained weights (Lightning warns, then loads "state_dict" into both).
This callback builds its copy at fit start (on the device the strategy chose), averages only `attr`, leaves the
trained weights and the checkpoint's state_dict alone, and keeps its state under the checkpoint's callbacks.
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
        full = (p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters())  # FSDP2: all-gather
        new_p = [p.detach().to(e.device, e.dtype) for p, e in zip(full, ema_p)]
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
