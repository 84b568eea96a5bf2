"""CLIP pretraining as a thin LightningModule: the model, open_clip's contrastive loss, AdamW + cosine schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import torch

from ..config import opt
from ..losses.contrastive import ClipLoss, SigLipLoss, contrastive_accuracy
from .budget import BudgetClock
from .optim import build_optimizer, build_scheduler
from .strategies import ShardedTask


@dataclass
class ClipTrain:
    """Training settings of recipes/clip_pretrain.py (override any with key=value)."""

    loss: str = opt("clip", choices=("clip", "siglip"))  # siglip: open_clip's SigLipLoss (the model needs a logit bias)
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
    train_minutes: float = opt(9.0, lo=0.0)  # training-time budget (0: none, stop at --max-steps); one clock
    # for all ranks
    schedule_by_time: bool = True  # the cosine follows max(step / max_steps, elapsed / budget): it always anneals
    eval_batch: int = opt(512, lo=1)
    max_bad_fraction: float = opt(0.05, lo=0.0, hi=1.0)  # stop when more than this fraction of samples could not be decoded


class TooManyBadSamples(RuntimeError):
    pass


def check_bad_fraction(bad: int, good: int, limit: float, min_seen: int = 100) -> None:
    """Stop a run whose data is mostly broken rather than train on what little decodes (pass counts summed over
    ranks, so that every rank decides alike)."""
    seen = bad + good
    if seen >= min_seen and bad / seen > limit:
        raise TooManyBadSamples(f"{bad} of {seen} samples ({bad / seen:.1%}) could not be decoded, more than "
                                f"max_bad_fraction={limit}; check the shards (or raise the limit)")


class ClipTask(ShardedTask, L.LightningModule):
    def __init__(self, model, train: ClipTrain, max_steps: int):
        super().__init__()
        self.model, self.train_cfg, self.max_steps = model, train, max_steps
        if train.loss == "siglip" and getattr(model, "logit_bias", None) is None:
            raise ValueError("loss=siglip needs a CLIP with a learnable logit bias: build it with init_logit_bias "
                             "(the recipe sets -10, and init_logit_scale log 10, for a preset)")
        self.loss_fn = SigLipLoss() if train.loss == "siglip" else ClipLoss()
        self.samples_seen = 0
        self.skipped: dict[int, int] = {}  # DataLoader worker -> undecodable samples it skipped so far
        self.clock = BudgetClock(train.train_minutes * 60)

    def configure_callbacks(self):
        return [self.clock]

    def _check_bad(self):
        """The bad-sample check on counts summed over ranks: every rank stops at the same step, same message."""
        counts = torch.tensor([sum(self.skipped.values()), self.samples_seen], dtype=torch.float64, device=self.device)
        bad, good = (int(v) for v in self.trainer.strategy.reduce(counts, reduce_op="sum").tolist())
        check_bad_fraction(bad, good, self.train_cfg.max_bad_fraction)

    def training_step(self, batch, batch_idx):
        image, text, scale = self.model(batch["images"], batch["text"])
        if self.train_cfg.loss == "siglip":
            loss = self.loss_fn(image, text, scale, self.model.logit_bias)
            self.log("train/logit_bias", self.model.logit_bias.detach())
        else:
            loss = self.loss_fn(image, text, scale)
        self.samples_seen += batch["images"].shape[0]
        if "skipped" in batch:
            worker, count = batch["skipped"]
            self.skipped[int(worker)] = int(count)
        self._check_bad()
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
        opt = build_optimizer(self.model, t.lr, t.weight_decay, betas=(0.9, t.beta2), eps=1e-6, trainer=self._trainer)
        progress = self.clock.fraction if t.schedule_by_time and self.clock.budget_s > 0 else None
        sched = build_scheduler(opt, t.warmup, self.max_steps, t.min_lr_ratio, progress)
        return {"optimizer": opt, "lr_scheduler": sched}
