"""Requests batched per forward: items queued by any number of requests run through one function call per
batch in a background thread (what is waiting when the previous batch ends goes into the next)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Callable

import torch

log = logging.getLogger(__name__)


class Worker:
    """A daemon thread running `self._loop`, started on first use; `_cv` guards the queue, `stop()` ends it."""

    name = "mmfm-worker"

    def __init__(self):
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False

    def _wake(self) -> None:
        """Start the thread if needed and wake it; call with `_cv` held."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
        self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        raise NotImplementedError


class Batcher(Worker):
    """`await batcher(kind, item)`: items of the same `kind` that are waiting together go through
    `fns[kind](items) -> results` (one result per item) as one batch of at most `max_batch`."""

    def __init__(self, fns: dict[str, Callable[[list], list]], max_batch: int = 64, name: str = "mmfm-batcher"):
        super().__init__()
        self.fns, self.max_batch, self.name = fns, max_batch, name
        self._pending: list[tuple[str, object, concurrent.futures.Future]] = []
        self.batches = 0  # forwards run (stats)

    async def __call__(self, kind: str, item):
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cv:
            self._pending.append((kind, item, fut))
            self._wake()
        return await asyncio.wrap_future(fut)

    def _take(self) -> list:
        kind = self._pending[0][0]
        batch = [p for p in self._pending if p[0] == kind][:self.max_batch]
        taken = {id(p) for p in batch}
        self._pending = [p for p in self._pending if id(p) not in taken]
        return batch

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._pending:
                    self._cv.wait()
                if self._stop:
                    break
                batch = self._take()
            kind, futures = batch[0][0], [f for _, _, f in batch]
            try:
                with torch.inference_mode():
                    results = self.fns[kind]([item for _, item, _ in batch])
                self.batches += 1
            except Exception as e:  # a failed batch fails its requests, not the worker
                log.exception("%s batch failed", kind)
                results = [e] * len(futures)
            for f, r in zip(futures, results):
                _resolve(f, r)
        for _, _, f in self._pending:
            f.cancel()


def _resolve(fut: concurrent.futures.Future, result) -> None:
    """Set a result (or an exception); a future its request already cancelled is left as it is."""
    try:
        fut.set_exception(result) if isinstance(result, Exception) else fut.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass
