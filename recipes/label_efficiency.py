"""Label efficiency: pretrained backbones vs the same architecture from scratch, under linear probe, LoRA and
full fine-tuning, at 1%, 10% and 100% of the training labels (each cell one recipes/finetune.py run).

    flock -x /tmp/mmfm-cpu.lock python recipes/label_efficiency.py                  # brain_mri + animals sanity rows
    python recipes/label_efficiency.py --backbones vit=runs/vit/model --methods linear --fractions 0.1 --max-steps 50

--preset is the architecture of the from-scratch row (default: the supervised ViT's folder). A backbone
folder that does not exist is skipped and reported. A finished cell (its metrics.json) is reused, so an
interrupted grid continues. --data (--val-data, --test-data) take any layout finetune.py reads (docs/data.md).
Writes <out>/results.json, <out>/table.md and the plot (--plot).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import numpy as np

from mmfm.train import Timer, parse_args, recipe_parser, setup_logging

log = logging.getLogger("label_efficiency")
ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("test/accuracy", "test/balanced_accuracy", "test/auroc", "test/f1", "steps", "n_train", "wall_s")


def finetune_module():
    if "finetune_recipe" not in sys.modules:
        spec = importlib.util.spec_from_file_location("finetune_recipe", ROOT / "recipes" / "finetune.py")
        sys.modules["finetune_recipe"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["finetune_recipe"])
    return sys.modules["finetune_recipe"]


def build_parser():
    p = recipe_parser(__doc__.splitlines()[0], "runs/vit/model", 200, "runs/adapt_label_efficiency")
    p.add_argument("--data", default="brain_mri", help="as finetune.py: ImageFolder, path,label CSV, .npz, DICOM/NIfTI "
                   "folder with labels.csv, or brain_mri, digits, animals")
    p.add_argument("--val-data", default=None, help="validation images for --data (default: split from --data)")
    p.add_argument("--test-data", default=None, help="test images for --data (default: split from --data)")
    p.add_argument("--backbones", default="vit=runs/vit/model,clip=runs/clip/model,resnet18=timm:resnet18",
                   help="name=folder_or_preset,... ('' for the scratch row only); timm:NAME is a timm network "
                   "(random init: MedMNIST's own ResNet-18 baseline is its 'full' row; timm:NAME=FILE for weights)")
    p.add_argument("--methods", default="linear,lora,full")
    p.add_argument("--fractions", default="0.01,0.1,1.0")
    p.add_argument("--sanity-data", default="animals", help="a second task for a sanity row ('' for none)")
    p.add_argument("--sanity-fractions", default="0.1")
    p.add_argument("--plot", default="docs/img/adapt_label_efficiency.png")
    p.add_argument("--seeds", default="0", help="seeds per cell (label subset, init, data order); mean ± std")
    p.add_argument("--reuse-only", action="store_true", help="tabulate finished cells only; run nothing")
    return p


def available(backbones: dict[str, str]) -> dict[str, str]:
    found = {}
    for name, init in backbones.items():
        if "/" in init and not (Path(init) / "config.json").is_file():
            log.warning("backbone %s: %s does not exist; skipped", name, init)
        else:
            found[name] = init
    return found


def run_cell(args, data: str, backbone: str, init: str, method: str, fraction: float, seed: int = 0) -> dict | None:
    out = Path(args.out) / Path(data).stem / (f"{backbone}_{method}_f{fraction:g}" + (f"_s{seed}" if seed else ""))
    row = {"data": Path(data).stem, "backbone": backbone, "method": method, "label_fraction": fraction, "seed": seed}
    done = out / "metrics.json"
    spec = {"method": method, "label_fraction": fraction, "init": init, "from_scratch": backbone == "scratch"}
    if done.is_file():
        old = json.loads(done.read_text())
        if all(old.get(k) == v for k, v in spec.items()) and old.get("steps", 0) <= args.max_steps:
            log.info("reusing %s", done)
            return {**row, **{k: old.get(k) for k in COLUMNS}}
    if args.reuse_only:
        return None
    argv = ["--init", init, "--data", data, "--method", method, "--out", str(out), "--max-steps", str(args.max_steps),
            "--seed", str(seed), "--device", args.device, f"label_fraction={fraction}", "progress=false",
            *[f"{k}={v}" for k, v in args.overrides.items()]]
    if backbone == "scratch":
        argv.append("--from-scratch")
    if data == args.data:  # the sanity task brings its own splits
        argv += [*(["--val-data", args.val_data] if args.val_data else []),
                 *(["--test-data", args.test_data] if args.test_data else [])]
    metrics = finetune_module().main(argv)
    return {**row, **{k: metrics.get(k) for k in COLUMNS}}


def summary(rows: list[dict], key: tuple, fraction: float, metric: str) -> tuple[float, float, int]:
    """(mean, std, n) of `metric` over the seeds of one (backbone, method) cell at `fraction`."""
    v = np.array([r[metric] for r in rows if (r["backbone"], r["method"]) == key and r["label_fraction"] == fraction])
    return (float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)) if len(v) else (np.nan, 0.0, 0)


def _cell(rows, key, fraction, metric) -> str:
    mean, std, n = summary(rows, key, fraction, metric)
    if n == 0:
        return "-"
    auroc = summary(rows, key, fraction, "test/auroc")[0]
    return f"{mean:.3f} ± {std:.3f} ({auroc:.3f})" if n > 1 else f"{mean:.3f} ({auroc:.3f})"


def table(rows: list[dict], data: str, metric: str = "test/balanced_accuracy") -> str:
    """Markdown: one row per backbone x method, one column per label fraction; cells: the metric
    (mean ± sample std over seeds when there are several) and the mean AUROC in brackets."""
    rows = [r for r in rows if r["data"] == data]
    fractions = sorted({r["label_fraction"] for r in rows})
    head = f"| {data}: backbone | method | " + " | ".join(f"{f:.0%} labels (n={_n(rows, f)})" for f in fractions) + " |"
    lines = [head, "|" + "---|" * (2 + len(fractions))]
    for key in dict.fromkeys((r["backbone"], r["method"]) for r in rows):
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(_cell(rows, key, f, metric) for f in fractions) + " |")
    return "\n".join(lines)


def _n(rows, fraction) -> int:
    return next(r["n_train"] for r in rows if r["label_fraction"] == fraction)


def plot(rows: list[dict], data: str, path: Path, metric: str = "test/balanced_accuracy") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["data"] == data]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.4), dpi=120, sharey=True, squeeze=False)
    for ax, method in zip(axes[0], methods):
        for backbone in dict.fromkeys(r["backbone"] for r in rows):
            fractions = sorted({r["label_fraction"] for r in rows if (r["method"], r["backbone"]) == (method, backbone)})
            if fractions:
                stats = np.array([summary(rows, (backbone, method), f, metric)[:2] for f in fractions])  # (F, 2)
                ax.errorbar(fractions, stats[:, 0], yerr=stats[:, 1], marker="o", capsize=3, label=backbone)
        ax.set_xscale("log")
        ax.set_title(method)
        ax.set_xlabel("fraction of training labels")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric.replace("test/", "test "))
    axes[0][0].legend()
    fig.suptitle(f"label efficiency on {data}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    setup_logging()
    args = parse_args(build_parser(), argv)
    backbones = available(dict(item.split("=", 1) for item in args.backbones.split(",") if item))
    scratch = available({"scratch": args.preset})
    grid = [(args.data, {**scratch, **backbones}, args.fractions)]
    if args.sanity_data:
        grid.append((args.sanity_data, {**scratch, **backbones}, args.sanity_fractions))
    timer, rows = Timer(), []
    for data, inits, fractions in grid:
        for backbone, init in inits.items():
            for method in args.methods.split(","):
                for fraction in map(float, fractions.split(",")):
                    for seed in map(int, args.seeds.split(",")):
                        row = run_cell(args, data, backbone, init, method, fraction, seed)
                        if row is not None:
                            rows.append(row)
                            log.info("%s", json.dumps(row))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    md = "\n\n".join(table(rows, Path(data).stem) for data, _, _ in grid)
    (out / "table.md").write_text(md + f"\n\ngrid wall time {timer.elapsed:.0f} s\n")
    plot(rows, Path(args.data).stem, Path(args.plot))
    log.info("table (test balanced accuracy [± std over seeds], mean AUROC in brackets):\n%s\ngrid wall time %.0f s", md, timer.elapsed)
    return rows


if __name__ == "__main__":
    main()
