"""CLIP pretraining as a thin LightningModule: the model, open_clip's contrastive loss, AdamW + cosine schedule."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import lightning as L
import torch

from ..config import opt
from ..losses.contrastive import ClipLoss, contrastive_accuracy


@dataclass
class ClipTrain:
    """Training settings of recipes/clip_pretrain.py (override any with key=value)."""

    lr: float = opt(1e-3, gt=0.0)
    min_lr_ratio: float = opt(0.05, lo=0.0, hi=1.0)
    warmup: int = opt(100, lo=0)
    weight_decay: float = opt(0.1, lo=0.0)
    beta2: float = opt(0.98, lo=0.0, lt=1.0)
    batch_size: int = opt(128, lo=1)
    num_workers: int = opt(1, lo=0)
    shuffle: int = opt(2000, lo=0)  # sample shuffle buffer
    augment: bool = True  # small random affine on training images
    random_caption: bool = True  # draw a fresh caption from json["captions"] each time an image is seen
    train_minutes: float = opt(9.0, lo=0.0)  # wall-clock budget of fitting (Lightning max_time)
    schedule_by_time: bool = True  # the cosine follows max(step / max_steps, elapsed / budget): it always anneals
    eval_batch: int = opt(512, lo=1)
    max_bad_fraction: float = opt(0.05, lo=0.0, hi=1.0)  # stop when more than this fraction of samples could not be decoded


def cosine_with_warmup(warmup: int, total: int, min_ratio: float, time_fraction=None):
    """LR factor per step: linear warmup, then cosine to min_ratio. With `time_fraction` (a callable giving the
    fraction of a wall-clock budget used), progress is the larger of the step and time fractions."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min((step - warmup) / max(total - warmup, 1), 1.0)
        if time_fraction is not None:
            t = max(t, min(time_fraction(), 1.0))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


class Budget:
    """Fraction of a wall-clock budget used since start() (0 before it)."""

    def __init__(self, seconds: float):
        self.seconds, self.t0 = seconds, None

    def start(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return 0.0 if self.t0 is None else (time.perf_counter() - self.t0) / self.seconds


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's split: no decay on gains, biases, norms and the logit scale (tensors with < 2 dims)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class TooManyBadSamples(RuntimeError):
    pass


def check_bad_fraction(bad: int, good: int, limit: float, min_seen: int = 100) -> None:
    """Stop a run whose data is mostly broken rather than train on what little decodes."""
    seen = bad + good
    if seen >= min_seen and bad / seen > limit:
        raise TooManyBadSamples(f"{bad} of {seen} samples ({bad / seen:.1%}) could not be decoded, more than "
                                f"max_bad_fraction={limit}; check the shards (or raise the limit)")


class ClipTask(L.LightningModule):
    def __init__(self, model, train: ClipTrain, max_steps: int):
        super().__init__()
        self.model, self.train_cfg, self.max_steps = model, train, max_steps
        self.loss_fn = ClipLoss()
        self.samples_seen = 0
        self.skipped: dict[int, int] = {}  # DataLoader worker -> undecodable samples it skipped so far
        self.budget = Budget(train.train_minutes * 60) if train.schedule_by_time else None

    def on_train_start(self):
        if self.budget is not None:
            self.budget.start()

    def training_step(self, batch, batch_idx):
        image, text, scale = self.model(batch["images"], batch["text"])
        loss = self.loss_fn(image, text, scale)
        self.samples_seen += batch["images"].shape[0]
        if "skipped" in batch:
            worker, count = batch["skipped"]
            self.skipped[int(worker)] = int(count)
            check_bad_fraction(sum(self.skipped.values()), self.samples_seen, self.train_cfg.max_bad_fraction)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/logit_scale", scale.detach())
        self.log("train/batch_acc", contrastive_accuracy(image.detach(), text.detach()))
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        with torch.no_grad():  # as open_clip: the temperature stays in [1, 100]
            self.model.logit_scale.clamp_(0, math.log(100))

    def configure_optimizers(self):
        t = self.train_cfg
        opt = torch.optim.AdamW(param_groups(self.model, t.weight_decay), lr=t.lr, betas=(0.9, t.beta2), eps=1e-6)
        factor = cosine_with_warmup(t.warmup, self.max_steps, t.min_lr_ratio, self.budget)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
