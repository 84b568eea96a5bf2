"""The thin LightningModule for adaptation: mmfm.train.classify.ClassifyTask (AdamW, warmup + cosine,
decay only on >= 2-D trainable weights) with the loss of any task kind instead of cross-entropy."""
from __future__ import annotations

from ..train.classify import ClassifyTask
from .kinds import TaskKind


class AdaptTask(ClassifyTask):
    """training_step / validation_step with `kind.loss` (weighted when the kind carries weights).
    Only parameters with requires_grad train, so the same module serves linear, LoRA and full."""

    def __init__(self, model, kind: TaskKind, lr: float, weight_decay: float, warmup_steps: int, total_steps: int):
        super().__init__(model, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, total_steps=total_steps)
        self.kind = kind

    def training_step(self, batch, _):
        loss = self.kind.loss(self.model(batch[0]), batch[1])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, _):
        self.log("val/loss", self.kind.loss(self.model(batch[0]), batch[1]), prog_bar=True)
