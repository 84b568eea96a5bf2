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
from lightning.pytorch.callbacks import ModelCheckpoint
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
        """Order: temp file (fsynced); sidecar listing the new hash AND the current file's; rename; sidecar with
        the new hash only. A crash at any point leaves a file whose hash the sidecar lists (the old or the new
        one, intact) and never makes a truncated file pass."""
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
        new = hashlib.sha256(data).hexdigest()
        atomic_write_text(_sidecar(path), "\n".join([new, *_recorded_hashes(path)]))
        os.replace(tmp, path)
        atomic_write_text(_sidecar(path), new)

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None):
        verify_checkpoint(path)
        return torch.load(path, map_location=map_location, weights_only=True)

    def remove_checkpoint(self, path) -> None:
        for p in (Path(path), _sidecar(Path(path))):
            p.unlink(missing_ok=True)


def _recorded_hashes(path: Path) -> list[str]:
    """The hashes an existing checkpoint may have: its sidecar's, or its own when it has no sidecar."""
    if _sidecar(path).is_file():
        return _sidecar(path).read_text().split()
    return [hashlib.sha256(path.read_bytes()).hexdigest()] if path.is_file() else []


def verify_checkpoint(path) -> None:
    """Raise CorruptCheckpointError if the file is truncated, altered or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    side = _sidecar(path)
    if side.is_file():
        want = side.read_text().split()  # one hash; two while a save is replacing the file
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        if got not in want:
            raise CorruptCheckpointError(f"checkpoint {path} is corrupted or truncated (sha256 {got[:12]}... "
                                         f"!= recorded {want[0][:12]}...)")
        return
    try:  # no sidecar (written elsewhere): at least check that it reads
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read means unusable
        raise CorruptCheckpointError(f"checkpoint {path} cannot be read: {type(e).__name__}: {e}") from None


def _recorded_step(path: Path) -> int:
    """The global step a checkpoint was written at (-1 when it records none)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt.get("global_step", -1)) if isinstance(ckpt, dict) else -1


def find_resume_checkpoint(out: str | os.PathLike) -> Path:
    """The newest intact checkpoint under <out>/checkpoints: the highest recorded global step, then the latest
    modification time (so a newer last-v1.ckpt wins over last.ckpt). Corrupted ones are reported and skipped."""
    folder = Path(out) / "checkpoints"
    found = sorted(folder.glob("*.ckpt"))
    if not found:
        raise FileNotFoundError(f"--resume {out}: no checkpoints in {folder}; was the run started with --out {out}?")
    ranked = []
    for path in found:
        try:
            verify_checkpoint(path)
            ranked.append((_recorded_step(path), path.stat().st_mtime, path))
        except (CorruptCheckpointError, RuntimeError, EOFError) as e:  # unreadable: fall back to an older one
            log.warning("%s; trying the previous checkpoint", e)
    if not ranked:
        raise CorruptCheckpointError(f"every checkpoint in {folder} is corrupted: {[p.name for p in found]}")
    return max(ranked, key=lambda r: r[:2])[2]


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose saved paths (best, last, top-k) follow the run folder: on resume, a path recorded
    under another folder (the run was moved or copied) is replaced by the same file name in this callback's
    dirpath when it exists there, and dropped when it does not, so a moved run never looks for the old folder
    and a copied run never uses the other folder's best.ckpt."""

    def _here(self, recorded) -> str:
        if not recorded:
            return recorded
        local = Path(self.dirpath) / Path(recorded).name
        return str(local) if local.is_file() else ""

    def load_state_dict(self, state_dict: dict) -> None:
        if self.dirpath is None or Path(state_dict.get("dirpath") or self.dirpath) == Path(self.dirpath):
            return super().load_state_dict(state_dict)
        state = dict(state_dict, dirpath=self.dirpath)
        for key in ("best_model_path", "last_model_path", "kth_best_model_path"):
            state[key] = self._here(state.get(key, ""))
        state["best_k_models"] = {self._here(k): v for k, v in state.get("best_k_models", {}).items() if self._here(k)}
        if not state["best_model_path"]:
            state["best_model_score"] = None
        log.info("checkpoint paths recorded under %s now resolve under %s", state_dict.get("dirpath"), self.dirpath)
        super().load_state_dict(state)


class RNGState(L.Callback):
    """Saves the Python, NumPy and torch RNG states with each checkpoint and restores them when the resumed
    training starts, so random draws continue exactly as in an uninterrupted run. Under several processes
    every rank's states are gathered into the checkpoint (which rank 0 writes) and each rank gets its own back."""

    def __init__(self):
        self._pending = None

    def state_dict(self) -> dict:
        """{"ranks": [rank 0's states, rank 1's, ...]}; Lightning calls this on every rank when it saves."""
        state = _rng_state()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, state)
            return {"ranks": ranks}
        return {"ranks": [state]}

    def load_state_dict(self, state: dict) -> None:
        self._pending = state

    def on_train_start(self, trainer, pl_module):
        """Restores before the first batch after the resume is fetched: the fetch itself draws random numbers
        (image augmentation in the main process), so restoring at the first step would come one batch late."""
        if self._pending is None:
            return
        s, self._pending = self._pending, None
        ranks = s.get("ranks", [s])  # checkpoints written before per-rank states hold one flat state
        if trainer.global_rank >= len(ranks):
            log.warning("the checkpoint holds RNG states of %d processes; rank %d keeps its own seed",
                        len(ranks), trainer.global_rank)
            return
        _set_rng_state(ranks[trainer.global_rank])


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": repr(random.getstate()),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                       "gauss": gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(s: dict) -> None:
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
    """Stops training before a non-finite loss reaches the weights, naming the step and the last good checkpoint.
    The flag is reduced over ranks, so all of them raise together with the same message (none waits in a
    collective for a rank that has stopped)."""

    def on_before_backward(self, trainer, pl_module, loss):
        bad = trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss).all()), all=False)
        if bad:
            folder = Path(trainer.default_root_dir) / "checkpoints"
            last = folder / "last.ckpt"
            where = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
            raise NonFiniteLossError(f"non-finite loss at step {trainer.global_step} (on at least one of "
                                     f"{trainer.world_size} processes); training stopped before the update; {where} "
                                     "(resume with --resume)")
