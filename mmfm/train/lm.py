"""Language-model pretraining: a training config, a thin LightningModule, an evaluator."""
from __future__ import annotations

import time
from dataclasses import dataclass

import lightning as L
import torch

from ..config import opt
from ..losses.lm import lm_loss
from .budget import BudgetClock
from .optim import MUON_LR, OPTIMIZERS, build_optimizer, build_scheduler, maybe_compile
from .muon import NS_DTYPES
from .strategies import ShardedTask


@dataclass
class LMTrainConfig:
    """What an LM recipe may vary besides the model (overridable as key=value)."""

    data: str = "data/shakespeare/char"  # a token folder: train.bin, val.bin, tokenizer/, meta.json
    batch_size: int = opt(16, lo=1)
    lr: float = opt(3e-3, gt=0.0)
    min_lr: float = opt(3e-4, lo=0.0)  # cosine decays lr to min_lr at the last step
    warmup_steps: int = opt(100, lo=0)
    weight_decay: float = opt(0.1, lo=0.0)
    optimizer: str = opt("auto", choices=OPTIMIZERS)  # muon: Muon for the stack's matrices, AdamW for the rest;
    # auto: muon except under FSDP (sharded matrices), where adamw
    muon_lr: float = opt(MUON_LR, gt=0.0)  # Muon's peak lr (optimizer=muon only); the schedule scales it with lr
    muon_ns: str = opt("auto", choices=NS_DTYPES)  # Newton-Schulz dtype (optimizer=muon): auto = bf16 on CUDA/AMX
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


class LMTask(ShardedTask, L.LightningModule):
    """Next-token prediction on (x, y) batches; logs train/loss, val/loss and the learning rate.
    With cfg.time_budget_s, a BudgetClock (made here unless given) stops training once the budget is spent,
    on every rank at the same step, and the cosine follows the larger of the step and budget fractions."""

    def __init__(self, model: torch.nn.Module, cfg: LMTrainConfig, max_steps: int, clock: BudgetClock | None = None):
        super().__init__()
        self.model, self.cfg, self.max_steps = model, cfg, max_steps
        if cfg.optimizer == "adamw" and cfg.muon_lr != MUON_LR:
            raise ValueError(f"muon_lr={cfg.muon_lr} is used by optimizer=muon only (optimizer={cfg.optimizer})")
        if cfg.optimizer == "adamw" and cfg.muon_ns != "auto":
            raise ValueError(f"muon_ns={cfg.muon_ns} is used by optimizer=muon only (optimizer={cfg.optimizer})")
        self.clock = clock if clock is not None else BudgetClock(cfg.time_budget_s)
        if self.clock.budget_s != (cfg.time_budget_s or 0.0):
            raise ValueError(f"the clock's budget ({self.clock.budget_s} s) differs from "
                             f"time_budget_s={cfg.time_budget_s}")
        maybe_compile(self, cfg.compile)

    def forward(self, idx):
        return self.model(idx)

    def configure_callbacks(self):
        return [self.clock]  # the same clock the recipe may also pass to the Trainer

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = lm_loss(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/loss", lm_loss(self(x), y), prog_bar=True, batch_size=x.numel())  # token-weighted mean

    def configure_optimizers(self):
        c = self.cfg
        opt = build_optimizer(self.model, c.lr, c.weight_decay, betas=(c.beta1, c.beta2), trainer=self._trainer,
                              optimizer=c.optimizer, muon_lr=c.muon_lr, muon_ns=c.muon_ns)
        progress = self.clock.fraction if c.time_budget_s else None
        return {"optimizer": opt,
                "lr_scheduler": build_scheduler(opt, c.warmup_steps, self.max_steps, c.min_lr / c.lr if c.lr else 0.0,
                                                 progress)}


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
