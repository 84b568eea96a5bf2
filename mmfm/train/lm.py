"""Language-model pretraining: a training config, a thin LightningModule, a clock, an evaluator."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import lightning as L
import torch

from ..config import opt
from ..losses.lm import lm_loss


@dataclass
class LMTrainConfig:
    """What an LM recipe may vary besides the model (overridable as key=value)."""

    data: str = "data/shakespeare/char"  # a token folder: train.bin, val.bin, tokenizer/, meta.json
    batch_size: int = opt(16, lo=1)
    lr: float = opt(3e-3, gt=0.0)
    min_lr: float = opt(3e-4, lo=0.0)  # cosine decays lr to min_lr at the last step
    warmup_steps: int = opt(100, lo=0)
    weight_decay: float = opt(0.1, lo=0.0)
    beta1: float = opt(0.9, lo=0.0, lt=1.0)
    beta2: float = opt(0.99, lo=0.0, lt=1.0)
    grad_clip: float = opt(1.0, lo=0.0)
    val_every: int = opt(500, lo=1)  # steps between periodic validations (on `val_tokens`)
    val_tokens: int = opt(65_536, lo=1)  # periodic validation sample, spread over the held-out split
    final_val_tokens: int = opt(0, lo=0)  # the final validation; 0: the whole held-out split
    compile: bool = False  # torch.compile the training forward
    time_budget_s: float = opt(580.0, lo=0.0)  # >0: stop after this many seconds of training (validation excluded); the
    # cosine then runs on max(step / max_steps, seconds / time_budget_s), so it always completes
    target_val_loss: float = 1.60
    sample_tokens: int = opt(200, lo=0)  # a sample printed to the log at the end (0: none)
    threads: int = opt(0, lo=0)  # torch threads (0: leave torch's default)


def cosine_lr(step: int, max_steps: int, warmup: int, lr: float, min_lr: float, progress: float = 0.0) -> float:
    """Linear warmup to `lr` over `warmup` steps, then cosine decay to `min_lr` at the end of training:
    at step `max_steps`, or earlier when `progress` (e.g. the fraction of a time budget spent) reaches 1."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = min(1.0, max((step - warmup) / max(1, max_steps - warmup), progress))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * frac))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (linear weights, embeddings), none on norms, biases, gains."""
    seen, decay, no_decay = set(), [], []
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class LMTask(L.LightningModule):
    """Next-token prediction on (x, y) batches; logs train/loss, val/loss and the learning rate.
    With cfg.time_budget_s and a TrainClock, training stops once the budget is spent."""

    def __init__(self, model: torch.nn.Module, cfg: LMTrainConfig, max_steps: int, clock: "TrainClock | None" = None):
        super().__init__()
        self.model, self.cfg, self.max_steps, self.clock = model, cfg, max_steps, clock
        if cfg.time_budget_s and clock is None:
            raise ValueError("time_budget_s needs a TrainClock (also passed to the Trainer's callbacks)")
        if cfg.compile:
            self.compile()  # compiles self.forward in place; state_dict keys are unchanged

    def forward(self, idx):
        return self.model(idx)

    def budget_spent(self) -> float:
        """Fraction of the time budget used so far (0 without a budget)."""
        return self.clock.elapsed() / self.cfg.time_budget_s if self.cfg.time_budget_s else 0.0

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = lm_loss(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.budget_spent() >= 1.0:
            self.trainer.should_stop = True

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", lm_loss(self(x), y), prog_bar=True, batch_size=x.numel())  # token-weighted mean

    def configure_optimizers(self):
        c = self.cfg
        fused = all(p.device.type in ("cpu", "cuda") for p in self.model.parameters())
        opt = torch.optim.AdamW(param_groups(self.model, c.weight_decay), lr=c.lr, betas=(c.beta1, c.beta2),
                                fused=fused)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: cosine_lr(s, self.max_steps, c.warmup_steps, c.lr, c.min_lr, self.budget_spent()) / c.lr)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class TrainClock(L.Callback):
    """Seconds spent training (validation excluded) and seconds spent validating."""

    def __init__(self):
        self.train_s = self.val_s = 0.0
        self._t, self._in_val = None, False

    def _start(self):
        self._t = time.perf_counter()

    def _stop(self) -> float:
        dt, self._t = (time.perf_counter() - self._t if self._t is not None else 0.0), None
        return dt

    def elapsed(self) -> float:
        """Training seconds so far, the current stretch included."""
        return self.train_s + (time.perf_counter() - self._t if self._t is not None and not self._in_val else 0.0)

    def on_train_start(self, trainer, pl_module):
        self._start()

    def on_validation_start(self, trainer, pl_module):
        self.train_s += self._stop()
        self._in_val = True
        self._start()

    def on_validation_end(self, trainer, pl_module):
        self.val_s += self._stop()
        self._in_val = False
        self._start()

    def on_train_end(self, trainer, pl_module):
        self.train_s += self._stop()


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, batch_size: int = 64) -> tuple[float, int, float]:
    """Mean next-token loss (nats/token) over a dataset of (x, y) windows: (loss, tokens, seconds)."""
    was_training = model.training
    model.eval()
    start, total, count = time.perf_counter(), 0.0, 0
    device = next(model.parameters()).device
    for x, y in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        x, y = x.to(device), y.to(device)
        total += float(lm_loss(model(x), y, reduction="sum"))
        count += y.numel()
    model.train(was_training)
    return total / max(count, 1), count, time.perf_counter() - start
