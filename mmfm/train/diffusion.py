"""Diffusion training: a thin LightningModule (the objective lives in mmfm.diffusion) and a sample-grid callback."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import lightning as L
import torch

from ..diffusion import diffusion_loss, make_sampler, sample
from .classify import warmup_cosine

log = logging.getLogger(__name__)


def label_condition(batch) -> dict:
    """(images, labels) -> class conditioning."""
    return {"y": batch[1]}


class DiffusionTask(L.LightningModule):
    """diffusion_loss(model, scheduler, images, condition(batch)) with condition dropout p_uncond;
    AdamW (no weight decay on vectors), linear warmup + cosine decay."""

    def __init__(self, model, scheduler, condition: Callable[[tuple], dict] = label_condition, lr: float = 1e-3,
                 weight_decay: float = 0.0, warmup_steps: int = 100, total_steps: int = 1000, p_uncond: float = 0.1):
        super().__init__()
        self.model, self.scheduler, self.condition = model, scheduler, condition
        self.lr, self.weight_decay, self.warmup_steps, self.total_steps = lr, weight_decay, warmup_steps, total_steps
        self.p_uncond = p_uncond

    def training_step(self, batch, _):
        loss = diffusion_loss(self.model, self.scheduler, batch[0], self.condition(batch), self.p_uncond,
                              getattr(self.model, "null_label", None))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": self.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        fused = all(p.device.type in ("cpu", "cuda") for p in params)  # one kernel per step, as the LM's
        opt = torch.optim.AdamW(groups, lr=self.lr, betas=(0.9, 0.99), fused=fused)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(self.warmup_steps, self.total_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def column_noise(shape_one: tuple, rows: int, seeds: list[int]) -> torch.Tensor:
    """Initial noise for a rows x len(seeds) grid: column j is drawn from seed j (same noise down a column).
    -> (rows * cols, *shape_one), row-major."""
    cols = [torch.randn(shape_one, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.stack(cols).repeat(rows, *([1] * len(shape_one)))  # (rows * cols, C, H, W)


def save_grid(images: torch.Tensor, rows: int, path: str | Path, row_names=None, col_names=None, title="") -> Path:
    """images (rows * cols, C, H, W) in [-1, 1], row-major -> a PNG with row / column labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    cols = len(images) // rows
    grid = make_grid((images.float().cpu() + 1) / 2, nrow=cols, padding=2, pad_value=1.0)  # (3, H', W')
    h, w = images.shape[-2:]
    fig, ax = plt.subplots(figsize=(1.0 + 0.42 * cols, 0.4 + 0.42 * rows), dpi=110)
    ax.imshow(grid.permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_yticks([2 + (h + 2) * i + h / 2 for i in range(rows)], row_names or [str(i) for i in range(rows)], fontsize=7)
    ax.set_xticks([2 + (w + 2) * j + w / 2 for j in range(cols)], col_names or [str(j) for j in range(cols)], fontsize=6)
    ax.tick_params(length=0)
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


class SampleGrid(L.Callback):
    """Every `every` steps and at the end, sample one row per condition and one column per seed with the EMA
    model (if an EMA callback is given) and write <out>/samples/step_<N>.png and <out>/samples.png."""

    def __init__(self, out, conditions: dict, row_names: list[str], seeds=(0, 1, 2, 3, 4, 5, 6, 7), every: int = 500,
                 sampler: str = "dpm++", steps: int = 20, guidance_scale: float = 3.0, ema=None, shape=None):
        self.out, self.conditions, self.row_names, self.seeds = Path(out), conditions, row_names, list(seeds)
        self.every, self.sampler, self.steps, self.guidance, self.ema, self.shape = every, sampler, steps, guidance_scale, ema, shape

    def render(self, pl_module, path: Path) -> Path:
        model = self.ema.model if self.ema is not None and self.ema.model is not None else pl_module.model
        was_training = model.training
        model.eval()
        rows, cols = len(self.row_names), len(self.seeds)
        cfg = model.config
        shape_one = self.shape or (cfg.in_channels, cfg.input_size, cfg.input_size)
        cond = {k: v.repeat_interleave(cols, 0).to(pl_module.device) for k, v in self.conditions.items()}  # row-major
        images = sample(model, make_sampler(self.sampler, pl_module.scheduler.config), (rows * cols, *shape_one), cond,
                        self.guidance, self.steps, noise=column_noise(shape_one, rows, self.seeds))
        model.train(was_training)
        return save_grid(images, rows, path, self.row_names, [f"s{s}" for s in self.seeds],
                         f"{self.sampler} {self.steps} steps, guidance {self.guidance}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if trainer.is_global_zero and self.every and step % self.every == 0 and step < trainer.max_steps:
            self.render(pl_module, self.out / "samples" / f"step_{step:06d}.png")

    def on_fit_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            log.info("wrote %s", self.render(pl_module, self.out / "samples.png"))
