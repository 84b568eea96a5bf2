"""CLIP pretraining as a thin LightningModule: the model, open_clip's contrastive loss, AdamW + cosine schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import torch

from ..losses.contrastive import ClipLoss, contrastive_accuracy


@dataclass
class ClipTrain:
    """Training settings of recipes/clip_pretrain.py (override any with key=value)."""

    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup: int = 100
    weight_decay: float = 0.1
    beta2: float = 0.98
    batch_size: int = 256
    num_workers: int = 1
    shuffle: int = 2000  # sample shuffle buffer
    augment: bool = True  # small random affine on training images
    random_caption: bool = True  # draw a fresh caption from json["captions"] each time an image is seen
    train_minutes: float = 9.5  # wall-clock cap on fitting (Lightning max_time); max_steps usually ends first
    eval_batch: int = 512


def cosine_with_warmup(warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min((step - warmup) / max(total - warmup, 1), 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """open_clip's split: no decay on gains, biases, norms and the logit scale (tensors with < 2 dims)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class ClipTask(L.LightningModule):
    def __init__(self, model, train: ClipTrain, max_steps: int):
        super().__init__()
        self.model, self.train_cfg, self.max_steps = model, train, max_steps
        self.loss_fn = ClipLoss()
        self.samples_seen = 0

    def training_step(self, batch, batch_idx):
        image, text, scale = self.model(batch["images"], batch["text"])
        loss = self.loss_fn(image, text, scale)
        self.samples_seen += batch["images"].shape[0]
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/logit_scale", scale.detach())
        self.log("train/batch_acc", contrastive_accuracy(image.detach(), text.detach()))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        with torch.no_grad():  # as open_clip: the temperature stays in [1, 100]
            self.model.logit_scale.clamp_(0, math.log(100))

    def configure_optimizers(self):
        t = self.train_cfg
        opt = torch.optim.AdamW(param_groups(self.model, t.weight_decay), lr=t.lr, betas=(0.9, t.beta2), eps=1e-6)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(t.warmup, self.max_steps, t.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
