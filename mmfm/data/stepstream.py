"""Batches as a pure function of (seed, rank, step): a resumed run sees exactly the batches an
uninterrupted run would have seen.

`StepLoader` is a DataLoader Lightning treats as stateful: each checkpoint records how many batches
training has *completed* (not how many were prefetched), and a resumed loader starts right there.
"""
from __future__ import annotations

from typing import Callable

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, get_worker_info


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A torch.Generator seeded from (seed, rank, step) (mixed so nearby seeds do not overlap)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2**63 - 1))


class StepStream(IterableDataset):
    """Yields make_batch(step, rank) for step = start_step, start_step + 1, ... (a pure function of its
    arguments and the seed it closes over; `step_generator(seed, step, rank)` gives a matching torch RNG).

    Under torch.distributed each rank draws from its own (seed, rank) stream; with several DataLoader
    workers, worker w yields the steps congruent to w (DataLoader interleaves them back in order).
    """

    def __init__(self, make_batch: Callable[[int, int], object]):
        self.make_batch = make_batch
        self.start_step = 0  # where iteration begins (set on resume)
        self.completed = 0  # batches training has finished (kept by CountCompleted)

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        step = self.start_step + wid
        while True:
            yield self.make_batch(step, rank)
            step += nw


class StepLoader(DataLoader):
    """DataLoader(StepStream, batch_size=None) whose state is the number of completed batches."""

    def __init__(self, stream: StepStream, **kw):
        super().__init__(stream, batch_size=None, **kw)

    def state_dict(self) -> dict:
        return {"next_step": self.dataset.completed}

    def load_state_dict(self, state: dict) -> None:
        self.dataset.start_step = self.dataset.completed = int(state["next_step"])


class CountCompleted(L.Callback):
    """Counts finished training batches on the stream (runs before checkpoint callbacks, which Lightning
    always runs last, so a checkpoint records the batch just finished)."""

    def __init__(self, stream: StepStream):
        self.stream = stream

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.stream.completed += 1
