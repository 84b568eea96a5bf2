"""CLIP pretraining as a thin LightningModule: the model, open_clip's contrastive loss, AdamW + cosine schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import torch

from ..config import opt
from ..losses.contrastive import ClipLoss, CocaLoss, SigLipLoss, contrastive_accuracy
from .budget import BudgetClock
from .optim import build_optimizer, build_scheduler
from .strategies import ShardedTask


@dataclass
class ClipTrain:
    """Training settings of recipes/clip_pretrain.py (override any with key=value)."""

    loss: str = opt("clip", choices=("clip", "siglip", "coca"))  # siglip: open_clip's SigLipLoss (the model needs a
    # logit bias); coca: open_clip's CoCaLoss, contrastive + captioning (the model needs decoder_layers > 0)
    coca_caption_weight: float = opt(2.0, lo=0.0)  # CoCa's caption-loss weight (open_clip's default)
    coca_contrastive_weight: float = opt(1.0, lo=0.0)  # CoCa's contrastive-loss weight (open_clip's default)
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


def build_loss(model, train: ClipTrain):
    """The task's loss for train.loss, after checking that the model has what it needs (a clear error if not)."""
    has_decoder = getattr(model, "decoder", None) is not None
    weights = ("coca_caption_weight", "coca_contrastive_weight")
    if train.loss != "coca" and any(getattr(train, w) != getattr(ClipTrain(), w) for w in weights):
        raise ValueError(f"coca_caption_weight/coca_contrastive_weight apply to loss=coca only, not loss={train.loss}")
    if train.loss != "coca" and has_decoder:
        raise ValueError(f"this CLIP has a caption decoder (decoder_layers={model.config.decoder_layers}), which "
                         f"loss={train.loss} would not train: use loss=coca, or build it with decoder_layers=0")
    if train.loss == "siglip":
        if getattr(model, "logit_bias", None) is None:
            raise ValueError("loss=siglip needs a CLIP with a learnable logit bias: build it with init_logit_bias "
                             "(the recipe sets -10, and init_logit_scale log 10, for a preset)")
        return SigLipLoss()
    if train.loss == "coca":
        if not has_decoder:
            raise ValueError("loss=coca needs a CLIP with a caption decoder: build it with decoder_layers > 0 (the "
                             "recipe sets decoder_layers=text_layers for a preset)")
        if getattr(model, "tokenizer", None) is None:
            raise ValueError("loss=coca needs the model's tokenizer (model.tokenizer) for its padding id")
        return CocaLoss(train.coca_caption_weight, train.coca_contrastive_weight, pad_id=model.tokenizer.pad_id)
    return ClipLoss()


class ClipTask(ShardedTask, L.LightningModule):
    def __init__(self, model, train: ClipTrain, max_steps: int):
        super().__init__()
        self.model, self.train_cfg, self.max_steps = model, train, max_steps
        self.loss_fn = build_loss(model, train)
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

    def _loss(self, batch):
        """(loss, image_features, text_features, logit_scale) for this batch, with the loss's own parts logged."""
        if self.train_cfg.loss == "coca":
            image, text, scale, logits = self.model.forward_coca(batch["images"], batch["text"])
            contrastive, caption = self.loss_fn(image, text, logits, batch["text"], scale)
            self.log("train/contrastive_loss", contrastive.detach())
            self.log("train/caption_loss", caption.detach(), prog_bar=True)
            return contrastive + caption, image, text, scale
        image, text, scale = self.model(batch["images"], batch["text"])
        if self.train_cfg.loss == "siglip":
            self.log("train/logit_bias", self.model.logit_bias.detach())
            return self.loss_fn(image, text, scale, self.model.logit_bias), image, text, scale
        return self.loss_fn(image, text, scale), image, text, scale

    def training_step(self, batch, batch_idx):
        loss, image, text, scale = self._loss(batch)
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
