"""The thin LightningModule for detection (torchvision's detector computes its own losses), mAP evaluation with
torchmetrics' MeanAveragePrecision, and a picture of predicted and true boxes."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from ..explain.overlay import save_figure
from ..train.optim import adamw_warmup_cosine
from .models import trunk_name


class DetectTask(L.LightningModule):
    """training_step: the sum of the detector's losses (FCOS: classification, box regression, centerness);
    AdamW with warmup + cosine from mmfm's one optimizer builder, the (pretrained) trunk at lr x backbone_lr_scale
    (its own parameter groups; the pyramid and head at lr)."""

    def __init__(self, model, lr: float, weight_decay: float, warmup_steps: int, total_steps: int,
                 backbone_lr_scale: float = 1.0):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.warmup_steps, self.total_steps = lr, weight_decay, warmup_steps, total_steps
        self.lr_scale = {trunk_name(model): backbone_lr_scale} if backbone_lr_scale != 1.0 else None

    def training_step(self, batch, _):
        images, targets = batch
        losses = self.model(list(images), targets)
        loss = sum(losses.values())
        self.log_dict({f"train/{k}": v for k, v in losses.items()})
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return adamw_warmup_cosine(self.model, self.lr, self.weight_decay, self.warmup_steps, self.total_steps, 0.05,
                                   self._trainer, lr_scale=self.lr_scale)


@torch.no_grad()
def predict(model, loader, device="cpu") -> tuple[list[dict], list[dict], list[torch.Tensor]]:
    """(predictions, targets, images) over a loader of (images, targets) batches, the model in eval mode."""
    model.eval().to(device)
    preds, targets, images = [], [], []
    for x, t in loader:
        out = model(list(x.to(device)))
        preds += [{k: v.cpu() for k, v in o.items()} for o in out]
        targets += t
        images += list(x)
    return preds, targets, images


def mean_ap(preds: list[dict], targets: list[dict], prefix: str = "") -> dict:
    """mAP@[.5:.95], mAP@0.5, mAP@0.75 and mAR@100 (COCO's definitions) by torchmetrics."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type="bbox", box_format="xyxy")
    metric.update(preds, targets)
    r = metric.compute()
    return {f"{prefix}{k}": round(float(r[k]), 4) for k in ("map", "map_50", "map_75", "mar_100")}


def plot_detections(images, preds, targets, names, path: str | Path, n: int = 8, min_score: float = 0.3,
                    title: str = "") -> Path:
    """A row of canvases: true boxes in green (class under the box), predictions >= min_score in red (class and
    score above)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = min(n, len(images))
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), squeeze=False)
    for ax, img, p, t in zip(axes[0], images, preds, targets):
        ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
        for (x0, y0, x1, y1), c in zip(t["boxes"].tolist(), t["labels"].tolist()):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="lime", lw=1.2))
            ax.text(x0, y1 + 1, names[c], color="lime", fontsize=6, va="top")
        keep = p["scores"] >= min_score
        for (x0, y0, x1, y1), c, s in zip(p["boxes"][keep].tolist(), p["labels"][keep].tolist(),
                                          p["scores"][keep].tolist()):
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="red", lw=1.0, ls="--"))
            ax.text(x0, y0 - 1, f"{names[c]} {s:.2f}", color="red", fontsize=6, va="bottom")
        ax.axis("off")
    fig.suptitle(title or "test canvases: true (green), predicted (red, dashed)", fontsize=9)
    return save_figure(fig, path)
