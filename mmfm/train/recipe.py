"""The one recipe contract: shared flags, overrides routed to configs, device/precision choice,
a Lightning Trainer with progress bar + CSV logs + checkpoints, and the files every run writes."""
from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import logging
import os
import time
from pathlib import Path

import torch

from ..config import ConfigError, checked_override, closest

log = logging.getLogger(__name__)


def parse_value(text: str):
    """'3' -> 3, '1e-3' -> 0.001, 'true' -> True, '[1,2]' -> [1, 2], 'nan'/'inf' -> float (for the checks to
    refuse by name), anything else stays a string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if low in ("nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"):
        return float(low)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def recipe_parser(description: str, preset: str, max_steps: int, out: str) -> argparse.ArgumentParser:
    """Flags every recipe takes; a recipe may add its own before parsing. Trailing `key=value`
    items override fields of the model config or the recipe's own config."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=out, help="output folder (model, metrics.json, plots, logs, checkpoints)")
    p.add_argument("--max-steps", type=int, default=max_steps, help="optimizer steps")
    p.add_argument("--preset", default=preset, help="model preset name or a saved model folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--precision", default="auto", choices=("auto", *PRECISIONS),
                   help="auto: bf16-mixed on a CUDA device with bf16, 16-mixed on one without; on a CPU bf16-mixed "
                        "where it has AMX and a short probe finds bf16 faster, else 32-true")
    p.add_argument("--devices", type=int, default=1, help="processes/GPUs on this node")
    p.add_argument("--num-nodes", type=int, default=1)
    p.add_argument("--strategy", default="auto", help="Lightning strategy: auto, ddp, fsdp, ...")
    p.add_argument("--resume", default=None, help="an earlier run's --out folder to continue from")
    p.add_argument("--ckpt-every", type=int, default=None, help="steps between checkpoints (default: the recipe's)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. n_layer=6 lr=3e-4")
    return p


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Flags and key=value overrides. Step and process counts must be positive: Lightning's max_steps=-1
    ("forever") is refused, since every recipe's schedule runs over --max-steps; a time-budgeted run takes a
    large --max-steps and its budget stops it."""
    args = parser.parse_intermixed_args(argv)  # key=value items may stand between flags
    for flag in ("max_steps", "devices", "num_nodes", "ckpt_every"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be a positive number, got {value}"
                         + ("; to train by time, set the recipe's time budget and a large --max-steps"
                            if flag == "max_steps" else ""))
    pairs = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"override {item!r} must look like key=value")
        pairs[key.strip().replace("-", "_")] = parse_value(value)
    args.overrides = pairs
    return args


def split_overrides(overrides: dict, **targets) -> dict[str, dict]:
    """Route each override to the target (a dataclass instance or a set of names) that has the key; a key that
    several targets have must be qualified with the target's name (`model.img_size=`, `train.img_size=`).
    A value routed to a dataclass is checked against the field's type and range (NaN/inf refused for floats)."""
    names = {t: ({f.name for f in dataclasses.fields(v)} if dataclasses.is_dataclass(v) else set(v))
             for t, v in targets.items()}
    routed = {t: {} for t in targets}
    for key, value in overrides.items():
        prefix, dot, bare = key.partition(".")
        if dot and prefix in names:
            if bare not in names[prefix]:
                raise ConfigError(f"unknown override {key!r}: {prefix} has no {bare!r}{closest(bare, names[prefix])}")
            owners = [prefix]
        else:
            owners = [t for t, n in names.items() if key in n]
        if not owners:
            raise ConfigError(f"unknown override {key!r}{closest(key, set().union(*names.values()))}")
        if len(owners) > 1:
            raise ConfigError(f"override {key!r} is ambiguous: {' and '.join(owners)} both have it; write "
                              + " or ".join(f"{t}.{key}=..." for t in owners))
        owner, name = owners[0], bare if dot and prefix in names else key
        target = targets[owner]
        routed[owner][name] = checked_override(target, name, value) if dataclasses.is_dataclass(target) else value
    return routed


PRECISIONS = ("32", "32-true", "16-mixed", "bf16-mixed", "bf16-true")


def resolve_accelerator(device: str, precision: str = "auto") -> tuple[str, str]:
    """(Lightning accelerator, precision). Automatic precision: bf16-mixed on a CUDA device that supports bf16,
    16-mixed on one that does not; on a CPU bf16-mixed where it has AMX bf16 units and a matmul probe confirms
    bf16 is faster, else 32-true (mmfm.train.precision)."""
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is visible")
    if precision not in ("auto", *PRECISIONS):
        raise ConfigError(f"--precision {precision!r}: expected auto or one of {', '.join(PRECISIONS)}")
    gpu = device in ("auto", "cuda") and torch.cuda.is_available()
    if precision != "auto":
        return ("gpu" if gpu else "cpu"), ("32-true" if precision == "32" else precision)
    if gpu:
        return "gpu", ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed")
    from . import precision as cpu_precision

    return "cpu", cpu_precision.auto_cpu_precision()


def checkpoint_to_resume(resume: str | None) -> str | None:
    """The newest intact checkpoint of an earlier run's --out folder (None when not resuming)."""
    if resume is None:
        return None
    from .reliability import find_resume_checkpoint

    path = find_resume_checkpoint(resume)
    log.info("resuming from %s", path)
    return str(path)


def make_trainer(args: argparse.Namespace, callbacks=(), val_every: int | None = None, ckpt_every: int = 500,
                 keep_last: int = 2, best_metric: str | None = None, **kw):
    """A Trainer that follows the contract: progress bar, CSV logs, crash-safe checkpoints every `ckpt_every`
    steps (the last `keep_last` plus last.ckpt, and the best by `best_metric` if given), exact RNG resume,
    and a stop on a non-finite loss."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from .budget import BudgetProgressBar
    from .reliability import NonFiniteGuard, RNGState, RunCheckpoint, SafeCheckpointIO
    from .strategies import build_strategy

    quiet_lightning()
    accelerator, precision = resolve_accelerator(args.device, getattr(args, "precision", "auto"))
    ckpt_every = getattr(args, "ckpt_every", None) or ckpt_every
    folder = Path(args.out) / "checkpoints"
    ckpts = [RunCheckpoint(dirpath=folder, filename="step{step:07d}", auto_insert_metric_name=False,
                             save_last=True, save_top_k=keep_last, monitor="step", mode="max",
                             every_n_train_steps=ckpt_every)]
    if best_metric:
        ckpts.append(RunCheckpoint(dirpath=folder, filename="best", monitor=best_metric, mode="min",
                                     save_top_k=1, auto_insert_metric_name=False))
    kw.setdefault("log_every_n_steps", 10)
    kw.setdefault("logger", CSVLogger(args.out, name="logs", version=""))
    bar = [BudgetProgressBar(refresh_rate=10)] if kw.get("enable_progress_bar", True) else []
    return L.Trainer(
        accelerator=accelerator, devices=args.devices, num_nodes=args.num_nodes,
        strategy=build_strategy(args.strategy, args.devices, args.num_nodes),
        precision=precision, max_steps=args.max_steps, max_epochs=-1, default_root_dir=args.out,
        enable_model_summary=False,
        callbacks=[*bar, RNGState(), NonFiniteGuard(), *ckpts, *callbacks],
        plugins=[SafeCheckpointIO()], val_check_interval=val_every,
        check_val_every_n_epoch=None if val_every else 1, **kw,
    )


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "/"))
        else:
            out[key] = v.item() if isinstance(v, torch.Tensor) else v
    return out


def global_rank() -> int:
    """This process's global rank as Lightning set it (0 outside distributed runs)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def write_metrics(out: str | os.PathLike, metrics: dict, name: str = "metrics.json") -> Path:
    """Atomically write a flat JSON object of final metrics (on global rank 0 only; other ranks write nothing)."""
    from ..checkpoint import atomic_write_text

    path = Path(out) / name
    if global_rank() != 0:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(flatten(metrics), indent=2, sort_keys=True))
    log.info("wrote %s", path)
    return path


class Timer:
    def __init__(self):
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class _DropLitLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


def quiet_lightning() -> None:
    """Silence two messages every new user saw and cannot act on: Lightning's "litlogger" tip and torch's
    `LeafSpec` deprecation (raised inside Lightning's own pytree helper). Other messages stay."""
    import warnings

    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated", category=FutureWarning)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLitLoggerTip) for f in logger.filters):
            logger.addFilter(_DropLitLoggerTip())


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    quiet_lightning()


def finish(args: argparse.Namespace, model, metrics: dict, timer: Timer | None = None) -> dict:
    """Save the final model folder to <out>/model and write <out>/metrics.json (with wall_s), on global rank 0
    only: a recipe that forgets its rank check still writes once."""
    out = Path(args.out)
    if global_rank() != 0:
        return metrics
    model.save_pretrained(out / "model")
    if timer is not None:
        metrics = {**metrics, "wall_s": round(timer.elapsed, 2)}
    write_metrics(out, metrics)
    log.info("final metrics: %s", json.dumps(flatten(metrics)))
    return metrics
