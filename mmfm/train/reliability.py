"""Nothing lost on a crash: atomic, checksummed checkpoints loaded without unpickling code, RNG state
restored exactly on resume, the newest intact checkpoint found, a guard that stops on a non-finite loss."""
from __future__ import annotations

import hashlib
import io
import logging
import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..checkpoint import atomic_write_text

log = logging.getLogger(__name__)


class CorruptCheckpointError(RuntimeError):
    pass


class NonFiniteLossError(RuntimeError):
    pass


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


class SafeCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file, fsynced and renamed into place, with a sha256 sidecar;
    loading verifies the hash and uses `torch.load(weights_only=True)`, which cannot run pickled code."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        data = buf.getvalue()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        atomic_write_text(_sidecar(path), hashlib.sha256(data).hexdigest())

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None):
        verify_checkpoint(path)
        return torch.load(path, map_location=map_location, weights_only=True)

    def remove_checkpoint(self, path) -> None:
        for p in (Path(path), _sidecar(Path(path))):
            p.unlink(missing_ok=True)


def verify_checkpoint(path) -> None:
    """Raise CorruptCheckpointError if the file is truncated, altered or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    side = _sidecar(path)
    if side.is_file():
        want = side.read_text().strip()
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got != want:
            raise CorruptCheckpointError(f"checkpoint {path} is corrupted or truncated (sha256 {got[:12]}... "
                                         f"!= recorded {want[:12]}...)")
        return
    try:  # no sidecar (written elsewhere): at least check that it reads
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read means unusable
        raise CorruptCheckpointError(f"checkpoint {path} cannot be read: {type(e).__name__}: {e}") from None


def find_resume_checkpoint(out: str | os.PathLike) -> Path:
    """The newest intact checkpoint under <out>/checkpoints (last.ckpt first, then by modification time).
    Corrupted ones are reported and skipped."""
    folder = Path(out) / "checkpoints"
    found = sorted(folder.glob("*.ckpt"), key=lambda p: (p.name == "last.ckpt", p.stat().st_mtime), reverse=True)
    if not found:
        raise FileNotFoundError(f"--resume {out}: no checkpoints in {folder}; was the run started with --out {out}?")
    for path in found:
        try:
            verify_checkpoint(path)
            return path
        except CorruptCheckpointError as e:
            log.warning("%s; trying the previous checkpoint", e)
    raise CorruptCheckpointError(f"every checkpoint in {folder} is corrupted: {[p.name for p in found]}")


class RNGState(L.Callback):
    """Saves the Python, NumPy and torch RNG states with each checkpoint and restores them just before the
    first batch after a resume, so random draws continue exactly as in an uninterrupted run."""

    def __init__(self):
        self._pending = None

    def state_dict(self) -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {"torch": torch.get_rng_state(), "python": repr(random.getstate()),
                 "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                           "gauss": gauss}}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        self._pending = state

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._pending is None:
            return
        s, self._pending = self._pending, None
        torch.set_rng_state(s["torch"])
        if "cuda" in s and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda"])
        n = s["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        random.setstate(_literal_tuple(s["python"]))


def _literal_tuple(text: str):
    import ast

    def to_tuple(x):
        return tuple(to_tuple(i) for i in x) if isinstance(x, (list, tuple)) else x

    return to_tuple(ast.literal_eval(text))


class NonFiniteGuard(L.Callback):
    """Stops training before a non-finite loss reaches the weights, naming the step and the last good checkpoint."""

    def on_before_backward(self, trainer, pl_module, loss):
        if not torch.isfinite(loss).all():
            folder = Path(trainer.default_root_dir) / "checkpoints"
            last = folder / "last.ckpt"
            where = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
            raise NonFiniteLossError(f"non-finite loss ({loss.detach().float().item()}) at step {trainer.global_step}; "
                                     f"training stopped before the update; {where} (resume with --resume)")
