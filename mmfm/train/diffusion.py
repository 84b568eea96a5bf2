"""Diffusion training: a thin LightningModule (the objective lives in mmfm.diffusion) and a sample-grid callback."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import lightning as L
import torch

from ..diffusion import diffusion_loss, make_sampler, sample
from .optim import build_optimizer, build_scheduler
from .strategies import ShardedTask

log = logging.getLogger(__name__)


def label_condition(batch) -> dict:
    """(images, labels) -> class conditioning."""
    return {"y": batch[1]}


class DiffusionTask(ShardedTask, L.LightningModule):
    """diffusion_loss(model, scheduler, images, condition(batch)) with condition dropout p_uncond;
    AdamW (no weight decay on vectors), linear warmup + cosine decay to 5% at `total_steps`, or at the end of a
    time budget when `progress` (a BudgetClock's fraction) is given, whichever comes first.

    Timesteps, noise and condition dropout come from the global generator on the data's device. Under several
    processes every rank starts from the same seed (identical initial weights), so at fit start rank r > 0
    reseeds with `seed + r`: each rank draws its own timesteps and noise, while rank 0 keeps the stream a
    one-process run has; the sampler alone decides the data order. RNGState restores each rank's own
    stream on resume."""

    def __init__(self, model, scheduler, condition: Callable[[tuple], dict] = label_condition, lr: float = 1e-3,
                 weight_decay: float = 0.0, warmup_steps: int = 100, total_steps: int = 1000, p_uncond: float = 0.1,
                 seed: int = 0, progress: Callable[[], float] | None = None):
        super().__init__()
        self.model, self.scheduler, self.condition, self.progress = model, scheduler, condition, progress
        self.lr, self.weight_decay, self.warmup_steps, self.total_steps = lr, weight_decay, warmup_steps, total_steps
        self.p_uncond, self.seed = p_uncond, seed

    def on_fit_start(self):
        if self.global_rank > 0:
            torch.manual_seed(self.seed + self.global_rank)

    def training_step(self, batch, _):
        loss = diffusion_loss(self.model, self.scheduler, batch[0], self.condition(batch), self.p_uncond,
                              getattr(self.model, "null_label", None))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        opt = build_optimizer(self.model, self.lr, self.weight_decay, betas=(0.9, 0.99), trainer=self._trainer)
        sched = build_scheduler(opt, self.warmup_steps, self.total_steps, 0.05, self.progress)
        return {"optimizer": opt, "lr_scheduler": sched}


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
                 sampler: str = "dpm++", steps: int = 20, guidance_scale: float = 3.0, ema=None, shape=None, decode=None):
        self.out, self.conditions, self.row_names, self.seeds = Path(out), conditions, row_names, list(seeds)
        self.decode = decode  # e.g. a VAE decoder (mmfm.diffusion.latent): model outputs -> images for the grid
        self.every, self.sampler, self.steps, self.guidance, self.ema, self.shape = every, sampler, steps, guidance_scale, ema, shape

    def render(self, pl_module, path: Path) -> Path:
        model = self.ema.model if self.ema is not None and self.ema.model is not None else pl_module.model
        device = next(model.parameters()).device  # the EMA copy stays on the accelerator after fit; the module not
        was_training = model.training
        model.eval()
        rows, cols = len(self.row_names), len(self.seeds)
        cfg = model.config
        shape_one = self.shape or (cfg.in_channels, cfg.input_size, cfg.input_size)
        cond = {k: v.repeat_interleave(cols, 0).to(device) for k, v in self.conditions.items()}  # (rows * cols, ...)
        images = sample(model, make_sampler(self.sampler, pl_module.scheduler.config), (rows * cols, *shape_one), cond,
                        self.guidance, self.steps, noise=column_noise(shape_one, rows, self.seeds))
        if self.decode is not None:
            images = self.decode(images)
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
