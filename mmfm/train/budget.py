"""One training clock for time budgets: rank 0's seconds, broadcast to every rank after each step, so all ranks
stop at the same step and read the same schedule progress; saved in checkpoints so a resumed run trains only the
rest of its budget."""
from __future__ import annotations

import math
import time
from datetime import timedelta

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from ..config import ConfigError


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


class BudgetClock(L.Callback):
    """Seconds spent training (validation excluded, resumed runs included) and seconds validating.
    `train_s` is rank 0's value, broadcast to every rank before each optimizer step; with `budget_s > 0`
    training stops (on every rank at once) when it is spent. `fraction()` is what the LR schedule reads."""

    def __init__(self, budget_s: float = 0.0):
        if budget_s is None or budget_s < 0:
            raise ValueError(f"time budget must be >= 0 seconds (0: none), got {budget_s}")
        self.budget_s = float(budget_s)
        self.train_s = self.val_s = 0.0  # train_s: synchronised across ranks at each batch end
        self._base = 0.0  # training seconds before the current stretch
        self._t = None  # perf_counter at the start of the current training stretch (None: not timing)
        self._val_t = None  # perf_counter at the start of a validation inside fit

    @staticmethod
    def _now() -> float:
        return time.perf_counter()

    def _local(self) -> float:
        return self._base + (self._now() - self._t if self._t is not None else 0.0)

    def fraction(self) -> float:
        """Share of the budget spent (0 without a budget); the same on every rank."""
        return self.train_s / self.budget_s if self.budget_s > 0 else 0.0

    def on_train_start(self, trainer, pl_module):
        self._base, self._t = self.train_s, self._now()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        """Synchronise before the step, so that the LR scheduler (stepped right after it) and the stop decision
        read the same number: once a step spends the budget, the LR it leaves is the end of the cosine."""
        if self.budget_s <= 0:  # no budget: nothing depends on the clock, no collective needed
            self.train_s = self._local()
            return
        self.train_s = float(trainer.strategy.broadcast(self._local(), src=0))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.budget_s > 0 and self.train_s >= self.budget_s:
            trainer.should_stop = True

    def on_validation_start(self, trainer, pl_module):
        if self._t is not None:  # a validation inside fit: its time is not training time
            self._base, self._t, self._val_t = self._local(), None, self._now()

    def on_validation_end(self, trainer, pl_module):
        if self._val_t is not None:
            self.val_s += self._now() - self._val_t
            self._t, self._val_t = self._now(), None

    def on_train_end(self, trainer, pl_module):
        self._base, self._t = self._local(), None

    def state_dict(self) -> dict:
        return {"train_s": self.train_s, "val_s": self.val_s, "budget_s": self.budget_s}

    def load_state_dict(self, state: dict) -> None:
        self.train_s, self.val_s = float(state["train_s"]), float(state["val_s"])
        self._base = self.train_s


def time_limit(minutes: float) -> dict:
    """Trainer keyword arguments for a wall-clock budget of `minutes` (0: none), for recipes whose schedule is
    driven by steps: Lightning's Timer (`max_time`), which checks rank 0's clock after every step and broadcasts
    its decision, so every rank stops at the same step, and which saves its elapsed time in checkpoints, so a
    resumed run gets only the rest of its budget. Its time includes validation inside fit."""
    if minutes is None or isinstance(minutes, bool) or not isinstance(minutes, (int, float)) \
            or not math.isfinite(minutes) or minutes < 0:
        raise ConfigError(f"max_minutes must be a finite number >= 0 (0: no time budget), got {minutes!r}")
    return {"max_time": timedelta(minutes=minutes)} if minutes > 0 else {}


def find_clock(trainer) -> BudgetClock | None:
    return next((c for c in trainer.callbacks if isinstance(c, BudgetClock)), None)


class BudgetProgressBar(TQDMProgressBar):
    """Lightning's bar; when a time budget is set, its total and ETA follow the budget (the steps the budget
    will allow at the current pace) and the postfix shows "budget 3:12/9:00"."""

    def on_train_epoch_start(self, trainer, *args):
        super().on_train_epoch_start(trainer, *args)
        self._steps_total = self.train_progress_bar.total  # what the step limit allows (None: unbounded)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        clock, bar = find_clock(trainer), self.train_progress_bar
        if bar is not None and clock is not None and clock.fraction() > 0 and trainer.global_step > 0:
            pace = clock.train_s / trainer.global_step  # seconds per step so far
            expected = batch_idx + 1 + int(max(clock.budget_s - clock.train_s, 0.0) / pace)
            cap = getattr(self, "_steps_total", None)
            bar.total = min(expected, cap) if cap else expected
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        clock = find_clock(trainer)
        if clock is not None and clock.budget_s > 0:
            items["budget"] = f"{_clock(clock.train_s)}/{_clock(clock.budget_s)}"
        return items
