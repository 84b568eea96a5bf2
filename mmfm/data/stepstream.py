"""Batches as a pure function of (seed, rank, step): a resumed run sees exactly the batches an
uninterrupted run would have seen. `resumable_loader` does the same for a map-style dataset (an epoch's order
a function of (seed, epoch), the position within it checkpointed).

`StepLoader` is a DataLoader Lightning treats as stateful: each checkpoint records how many batches
training has *completed* (not how many were prefetched), and a resumed loader starts right there.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader


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


class ResumableShuffle(DistributedSampler):
    """torch's DistributedSampler (each epoch's order a function of (seed, epoch), split over the ranks) that
    reads the ranks when an epoch starts, so it can be built before the process group, and whose state
    (epoch, position) torchdata's StatefulDataLoader puts in every Lightning checkpoint: a resume continues
    the epoch it stopped in, at the next batch. Lightning leaves a DistributedSampler in place under DDP."""

    def __init__(self, dataset, seed: int = 0):
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=True, seed=seed)
        self._current, self._next_epoch = None, False

    def __iter__(self):
        if dist.is_available() and dist.is_initialized():
            self.num_replicas, self.rank = dist.get_world_size(), dist.get_rank()
            self.num_samples = math.ceil(len(self.dataset) / self.num_replicas)
            self.total_size = self.num_samples * self.num_replicas
        self._current = _Position(list(super().__iter__()), restorable=not self._next_epoch)
        self._next_epoch = False
        return self._current

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "finished": self._current is not None and self._current.finished}

    def load_state_dict(self, state: dict) -> None:
        """A checkpoint taken after an epoch's last batch resumes at the next epoch's first (Lightning would
        otherwise count the exhausted epoch once more)."""
        self._next_epoch = bool(state.get("finished", False))
        self.epoch = int(state["epoch"]) + self._next_epoch


class _Position:
    """An epoch's index order with its position as state."""

    def __init__(self, order: list[int], restorable: bool = True):
        self.order, self.i, self.restorable = order, 0, restorable

    @property
    def finished(self) -> bool:
        return self.i >= len(self.order)

    def __iter__(self):
        return self

    def __next__(self) -> int:
        if self.finished:
            raise StopIteration
        self.i += 1
        return self.order[self.i - 1]

    def state_dict(self) -> dict:
        return {"yielded": self.i}

    def load_state_dict(self, state: dict) -> None:
        if self.restorable:
            self.i = int(state["yielded"])


def resumable_loader(dataset, batch_size: int, seed: int, drop_last: bool = True, **kw) -> StatefulDataLoader:
    """Shuffled full batches of a map-style dataset, resumable mid-epoch: torchdata's StatefulDataLoader over
    a ResumableShuffle order."""
    with warnings.catch_warnings():  # torchdata 0.11 calls the deprecated torch.set_vital in __init__
        warnings.filterwarnings("ignore", message="'set_vital' is deprecated")
        # its own generator for the workers' base seed: drawn from the global RNG, it would shift the draws
        # (augmentation) of an uninterrupted run against a resumed one at every new epoch
        return StatefulDataLoader(dataset, batch_size=batch_size, sampler=ResumableShuffle(dataset, seed),
                                  drop_last=drop_last, generator=torch.Generator().manual_seed(seed), **kw)
