"""Reference-model log-probs computed once and kept on disk: DPO and KTO score every training response under the
frozen reference before training, and a later run with the same reference weights and the same encoded data (a
re-run, another beta or loss, a resumed run) loads them instead of running the reference again.

The file is <folder>/ref_logps-<key>.pt, where the key hashes the reference's weights (every tensor of its
state_dict, in order, with its name, dtype and shape) and the token rows scored (ids and loss masks): a changed
model or a changed record gives another file, never stale values.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

log = logging.getLogger(__name__)


def weights_digest(model: nn.Module) -> str:
    """sha256 over the model's state_dict: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(model: nn.Module, rows, extra: dict | None = None) -> str:
    """The cache key of scoring `rows` (nested lists of token ids / masks, JSON-serialisable) under `model`, with
    any `extra` settings that change the values (such as the pad id)."""
    h = hashlib.sha256(weights_digest(model).encode())
    h.update(json.dumps([rows, extra or {}], separators=(",", ":")).encode())
    return h.hexdigest()[:24]


def cached_logprobs(model: nn.Module, rows, compute: Callable[[], torch.Tensor], folder: str | Path,
                    extra: dict | None = None) -> torch.Tensor:
    """`compute()` (the reference's log-probs of `rows`), read from `folder` when a run with the same weights and
    rows already wrote them, else computed and written there (atomically, so that a run stopped mid-write or a
    second process leaves no partial file). Returned on the CPU."""
    key = cache_key(model, rows, extra)
    path = Path(folder) / f"ref_logps-{key}.pt"
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            log.info("reference log-probs of %d rows loaded from %s", len(saved["logps"]), path)
            return saved["logps"]
        log.warning("%s holds another key (%s): recomputing", path, saved.get("key"))
    logps = compute().detach().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save({"key": key, "logps": logps}, tmp)
    os.replace(tmp, path)
    log.info("reference log-probs of %d rows computed and saved to %s", len(logps), path)
    return logps
