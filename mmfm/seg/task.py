"""The thin LightningModule for segmentation (MONAI's DiceCELoss), whole-slice evaluation with MONAI's
sliding-window inference and DiceMetric, and the ground-truth vs prediction overlay."""
from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch

from ..train.optim import adamw_warmup_cosine


def dice_ce_loss():
    """MONAI's Dice + cross-entropy on logits (B, C, H, W) against labels (B, 1, H, W)."""
    from monai.losses import DiceCELoss

    return DiceCELoss(to_onehot_y=True, softmax=True)


class SegTask(L.LightningModule):
    """training_step: the loss of model(images) against labels; AdamW + warmup-cosine from mmfm's builder."""

    def __init__(self, model, lr: float, weight_decay: float, warmup_steps: int, total_steps: int):
        super().__init__()
        self.model, self.loss = model, dice_ce_loss()
        self.lr, self.weight_decay, self.warmup_steps, self.total_steps = lr, weight_decay, warmup_steps, total_steps

    def training_step(self, batch, _):
        images, labels = batch
        loss = self.loss(self.model(images), labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return adamw_warmup_cosine(self.model, self.lr, self.weight_decay, self.warmup_steps, self.total_steps, 0.05,
                                   self._trainer)


@torch.no_grad()
def predict_slices(model, images: np.ndarray, roi: int, batch: int = 8, overlap: float = 0.25) -> np.ndarray:
    """Whole slices (N, H, W) -> predicted classes (N, H, W) with MONAI's sliding-window inference: roi x roi
    windows (Gaussian-weighted where they overlap; slices smaller than the roi are padded)."""
    from monai.inferers import sliding_window_inference

    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch]))[:, None].to(device)  # (b, 1, H, W)
        logits = sliding_window_inference(x, (roi, roi), sw_batch_size=16, predictor=model, overlap=overlap,
                                          mode="gaussian")
        out.append(logits.argmax(1).cpu().numpy())
    return np.concatenate(out)


@torch.no_grad()
def predict_volume(model, image: np.ndarray, roi, sw_batch: int = 4, overlap: float = 0.25) -> np.ndarray:
    """A whole volume (Z, H, W) -> predicted classes (Z, H, W) with MONAI's 3-D sliding-window inference over
    roi = (depth, h, w) windows (Gaussian-weighted where they overlap; sides smaller than the roi are padded).
    Only images go in: the caller scores the held-out slices of the prediction."""
    from monai.inferers import sliding_window_inference

    model.eval()
    x = torch.from_numpy(np.ascontiguousarray(image))[None, None].to(next(model.parameters()).device)  # (1, 1, Z, H, W)
    logits = sliding_window_inference(x, tuple(roi), sw_batch_size=sw_batch, predictor=model, overlap=overlap,
                                      mode="gaussian")
    return logits[0].argmax(0).cpu().numpy()


def dice_per_class(pred: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Dice of each foreground class over the whole stack of slices (one 3-D item), by MONAI's DiceMetric;
    a class absent from both prediction and truth is left out (NaN)."""
    from monai.metrics import DiceMetric
    from monai.networks.utils import one_hot

    n = len(classes)
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    def item(a: np.ndarray) -> torch.Tensor:  # (N, H, W) -> one-hot (1, n, H, W, N)
        return one_hot(torch.from_numpy(a.astype(np.int64)).permute(1, 2, 0)[None, None], n)

    scores = metric(item(pred), item(labels))[0]
    return {c: round(float(s), 4) for c, s in zip(classes[1:], scores) if not torch.isnan(s)}


def summary(per_class: dict[str, float], prefix: str) -> dict[str, float]:
    """{prefix/dice: mean over the classes present, prefix/dice/<class>: ...}."""
    out = {f"{prefix}/dice": round(float(np.mean(list(per_class.values()))), 4) if per_class else float("nan")}
    out.update({f"{prefix}/dice/{c}": v for c, v in per_class.items()})
    return out


def plot_overlays(images: np.ndarray, labels: np.ndarray, preds: dict[str, np.ndarray], classes: list[str],
                  path: str | Path, title: str = "", n: int = 4) -> Path:
    """Rows of held-out slices: the image, ground truth, then each model's prediction, classes in colour over the
    image (background transparent)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    pick = np.linspace(0, len(images) - 1, min(n, len(images))).round().astype(int)
    cols = ["image", "ground truth", *preds]
    cmap = ListedColormap(plt.get_cmap("tab10").colors[:max(len(classes) - 1, 1)])
    fig, axes = plt.subplots(len(pick), len(cols), figsize=(2.4 * len(cols), 2.4 * len(pick)), squeeze=False)
    for r, i in enumerate(pick):
        masks = [None, labels[i], *(p[i] for p in preds.values())]
        for ax, name, m in zip(axes[r], cols, masks):
            ax.imshow(images[i], cmap="gray", vmin=-1, vmax=1)
            if m is not None:
                ax.imshow(np.ma.masked_equal(m, 0), cmap=cmap, vmin=1, vmax=max(len(classes) - 1, 1), alpha=0.5,
                          interpolation="nearest")
            ax.set_title(name if r == 0 else "", fontsize=8)
            ax.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(j)) for j in range(len(classes) - 1)]
    fig.legend(handles, classes[1:], loc="lower center", ncol=min(len(classes) - 1, 7), fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
