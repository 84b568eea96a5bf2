"""What the alignment recipes share around the Trainer: their data flags, the overrides that only the built-in
task reads, a seeded loader, and fit with --resume, after which only rank 0 evaluates on the training device."""
from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader

from ..config import ConfigError
from ..data.stepstream import resumable_loader
from ..train import checkpoint_to_resume
from ..train.strategies import unshard_children

log = logging.getLogger(__name__)


def builtin_only(args, names: tuple[str, ...]) -> None:
    """Overrides that shape the built-in task's files are an error with --data (they would be ignored), and
    val_fraction is one unless --data is split (no --val-data)."""
    given = sorted(set(args.overrides) & set(names))
    if getattr(args, "data", None) and given:
        raise ConfigError(f"{', '.join(given)} only shape the built-in task's data; with --data {args.data} "
                          "drop them (the file decides what is trained on)")
    if "val_fraction" in args.overrides and (args.val_data or not args.data):
        raise ConfigError("val_fraction splits --data when no --val-data is given; here the held-out records come "
                          f"from {args.val_data or 'the built-in task'}")


def splits(args, write_builtin, reader, val_fraction: float):
    """(train, val, sizes) from --data/--val-data; without --data, `write_builtin(folder)` writes the built-in
    task's files under <out>/data and returns (train file, val file), and a --val-data given still counts."""
    from pathlib import Path

    from .formats import train_val

    data, val_data = args.data, args.val_data
    if not data:
        data, builtin_val = write_builtin(Path(args.out) / "data")
        val_data = val_data or builtin_val
    return train_val(data, val_data, reader, val_fraction, args.seed)


def train_loader(dataset, batch_size: int, collate, seed: int) -> DataLoader:
    """A shuffled loader of full batches; a batch larger than the data shrinks to it. Resumable mid-epoch
    (mmfm.data.stepstream.resumable_loader)."""
    if len(dataset) == 0:
        raise ValueError("no training examples left after the split; give more data or a smaller val_fraction")
    if batch_size > len(dataset):
        log.warning("batch_size %d > %d training examples: using %d", batch_size, len(dataset), len(dataset))
    return resumable_loader(dataset, min(batch_size, len(dataset)), seed, collate_fn=collate)


def fit(trainer, task, args, train, val=None) -> bool:
    """trainer.fit, continuing from --resume's newest intact checkpoint; -> True on rank 0 only, with the task
    moved back to the device it trained on (Lightning leaves it on the CPU) for evaluation. Under FSDP the task's
    sharded models are replaced by full copies: read them from the task (`task.model`), not from earlier names."""
    trainer.fit(task, train, val, ckpt_path=checkpoint_to_resume(args.resume))
    unshard_children(task)  # FSDP: rank 0's task holds full copies of its models (a collective: every rank)
    if not trainer.is_global_zero:
        return False
    task.to(trainer.strategy.root_device)
    return True
