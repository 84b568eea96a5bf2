"""Callbacks shared by recipes: loss history with a PNG plot."""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L


def plot_curves(history: dict[str, list[tuple[int, float]]], path: str | Path, title: str = "") -> Path:
    """One line per series of (step, value); y on a log scale when all values are positive."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    positive = True
    for name, points in sorted(history.items()):
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, label=name, marker="o" if len(points) < 30 else None, ms=3)
            positive &= min(values) > 0
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


class LossHistory(L.Callback):
    """Records logged scalars whose names start with `prefixes` and writes history.json + loss.png at the end."""

    def __init__(self, out: str | Path, prefixes=("train/loss", "val/loss"), title: str = ""):
        self.out, self.prefixes, self.title = Path(out), prefixes, title
        self.history: dict[str, list[tuple[int, float]]] = {}

    def _record(self, trainer, stage: str):
        for k, v in trainer.callback_metrics.items():
            if k.startswith(self.prefixes) and k.startswith(stage) and v.numel() == 1:
                series = self.history.setdefault(k, [])
                step = trainer.global_step
                if not series or series[-1][0] != step:
                    series.append((step, float(v)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            self._record(trainer, "train")

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self._record(trainer, "val")

    def state_dict(self):
        return {"history": self.history}

    def load_state_dict(self, state):
        self.history = {k: [tuple(p) for p in v] for k, v in state["history"].items()}

    def on_fit_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "history.json").write_text(json.dumps(self.history))
            plot_curves(self.history, self.out / "loss.png", self.title)
