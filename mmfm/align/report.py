"""Plots of the alignment pipeline: PPO reward / KL per step, reward-model pairwise accuracy, and
held-out task accuracy per stage.

    python -m mmfm.align.report runs/align docs/img     # after recipes/align_all.sh
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ppo(history: list[dict], path) -> Path:
    """Mean reward, KL to the reference and the rollout accuracy (the exact_match term; else the first reward
    term) against the PPO step."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), dpi=120)
    steps = [h["step"] for h in history]
    terms = [k for k in (history[0] if history else {}) if k.startswith("reward_")]
    third = "reward_exact_match" if "reward_exact_match" in terms else terms[0] if terms else "reward"
    for ax, key, title in zip(axes, ("reward", "kl", third),
                              ("mean reward (weighted sum; reward models standardised)",
                               "KL(policy || SFT) per response, at the rollout T",
                               "rollout accuracy (training prompts)" if third == "reward_exact_match"
                               else f"{third} (training prompts)")):
        ax.plot(steps, [h[key] for h in history], marker="o", ms=2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("PPO step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_stages(stages: dict[str, dict], path) -> Path:
    """Held-out accuracy (greedy and sampled at T=1) of each stage as grouped bars."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    names = list(stages)
    for j, (key, label) in enumerate((("heldout/accuracy", "greedy"), ("heldout_t1/accuracy", "sampled, T=1"))):
        vals = [100 * stages[n].get(key, float("nan")) for n in names]
        bars = ax.bar([i + 0.38 * j for i in range(len(names))], vals, width=0.36, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks([i + 0.19 for i in range(len(names))], names)
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.set_title("checkable task: 2-digit + / - with worked steps (held-out prompts)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_rm(history: dict, metrics: dict, path, target: float = 0.85) -> Path:
    """Pairwise accuracy of the reward model against the training step (train batches and held-out
    pairs), and the final held-out accuracy by the labeller's reason."""
    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=120, gridspec_kw={"width_ratios": [3, 2]})
    for key, label in (("train/acc", "train batches"), ("val/acc", "held-out pairs")):
        if history.get(key):
            steps, vals = zip(*history[key])
            ax.plot(steps, [100 * v for v in vals], marker="o" if key == "val/acc" else None, ms=3, label=label)
    ax.axhline(100 * target, color="gray", ls="--", lw=1, label=f"target {100 * target:.0f}%")
    ax.set(xlabel="RM step", ylabel="pairwise accuracy (%)", ylim=(40, 100))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    kinds = sorted(k[len("heldout/acc_"):] for k in metrics if k.startswith("heldout/acc_"))
    bars = bx.bar(["all", *kinds], [100 * metrics["heldout/acc"], *(100 * metrics[f"heldout/acc_{k}"] for k in kinds)])
    bx.bar_label(bars, labels=[f"n={int(metrics[f'heldout/n{s}'])}" for s in ["", *(f"_{k}" for k in kinds)]], fontsize=7)
    bx.set(ylim=(0, 105), title="held-out accuracy by reason")
    bx.tick_params(axis="x", labelsize=7, labelrotation=20)
    bx.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def main(run_dir: str, img_dir: str) -> dict:
    run, img = Path(run_dir), Path(img_dir)
    img.mkdir(parents=True, exist_ok=True)
    stages = {name: json.loads((run / name / "metrics.json").read_text())
              for name in ("base", "sft", "ppo", "dpo") if (run / name / "metrics.json").is_file()}
    plot_stages(stages, img / "align_accuracy.png")
    if (run / "ppo" / "history.json").is_file():
        plot_ppo(json.loads((run / "ppo" / "history.json").read_text()), img / "align_ppo.png")
    if (run / "rm" / "history.json").is_file():
        rm = json.loads((run / "rm" / "metrics.json").read_text())
        plot_rm(json.loads((run / "rm" / "history.json").read_text()), rm, img / "align_rm.png")
    return stages


if __name__ == "__main__":
    for name, m in main(*sys.argv[1:3]).items():
        print(name, {k: v for k, v in m.items() if "accuracy" in k or "kl" in k or k.startswith("heldout/")})
