"""Saved model folders: config.json + model.safetensors (+ tokenizer/). Weights are never unpickled.

A folder is saved whole: written into a temporary sibling folder and swapped in, files created with the
mode the umask gives (not mkstemp's 0600). Loading checks the weights file before safetensors reads it
(a truncated file, a pickle renamed to .safetensors, another family's weights each fail with a sentence)
and warns, naming the tensors, when weights are NaN or infinite."""
from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from .registry import _FAMILIES, _PRESETS, check_fits, model_class, read_config

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
OWN = ("config.json", WEIGHTS)  # what save_pretrained writes itself (plus tokenizer/ when the model has one)


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # the only portable read of the umask is to set it and set it back
    os.umask(mask)
    return mask


def _default_mode(path: str | Path, is_dir: bool = False) -> None:
    """Give a mkstemp/mkdtemp path (0600/0700) the mode an ordinary open()/mkdir() would have."""
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        _default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _keep_extras(old: Path, new: Path, skip: set[str]) -> None:
    """Copy what other code wrote into the old folder (diffusion.json, scheduler/, head.safetensors, ...)."""
    for item in old.iterdir():
        if item.name in skip or item.name in {p.name for p in new.iterdir()}:
            continue
        if item.is_dir():
            shutil.copytree(item, new / item.name, symlinks=True)
        else:
            shutil.copy2(item, new / item.name, follow_symlinks=False)


def _swap_in(tmp: Path, path: Path) -> None:
    """Replace folder `path` by `tmp` with two renames; the old folder is removed after the swap."""
    if not path.exists():
        os.rename(tmp, path)
        return
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_folder(path: str | os.PathLike, what: str = "model"):
    """Yield a temporary sibling folder to write `path`'s files into; on success it is swapped in for `path`,
    on failure removed (an existing `path` stays as it was)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a folder: a {what} is saved as a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        _default_mode(tmp, is_dir=True)
        yield tmp
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_pretrained(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write config.json, model.safetensors and the model's tokenizer (if any) into a temporary sibling folder,
    then swap it in for `path`; files other code put in an existing `path` are carried over."""
    path = Path(path)
    with atomic_folder(path) as tmp:
        cfg = model.config
        (tmp / "config.json").write_text(json.dumps({"family": cfg.family, "config": cfg.to_dict()}, indent=2))
        save_model(model, str(tmp / WEIGHTS))  # handles tied weights
        _default_mode(tmp / WEIGHTS)
        tok = getattr(model, "tokenizer", None)
        if tok is not None:
            tok.save(tmp / "tokenizer")
        if path.is_dir():
            _keep_extras(path, tmp, set(OWN) | ({"tokenizer"} if tok is not None else set()))
    return path


def weights_header(file: Path) -> dict:
    """The safetensors header of `file` ({name: {dtype, shape, data_offsets}}), checked against the file's size;
    a pickle, a zip (torch.save) or a truncated file fails naming the file. Nothing is unpickled."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if head.startswith(b"PK\x03\x04"):
            raise ValueError(f"{file} is a zip archive (a torch.save checkpoint), not safetensors; it is not loaded "
                             f"because unpickling can run code: convert it where you trust it")
        if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
            raise ValueError(f"{file} is a Python pickle, not safetensors; it is not loaded because unpickling "
                             f"can run code: convert it where you trust it")
        if len(head) < 8:
            raise ValueError(f"{file} is truncated or not a safetensors file: {size} bytes")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            raise ValueError(f"{file} is truncated or not a safetensors file: its header says {n:,} header bytes, "
                             f"the file has {size:,} bytes")
        try:
            header = json.loads(f.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError):
            raise ValueError(f"{file} is not a safetensors file (its header is not safetensors JSON)") from None
    if 8 + n + end > size:
        raise ValueError(f"{file} is truncated: its tensors need {8 + n + end:,} bytes, the file has {size:,}")
    header.pop("__metadata__", None)
    return header


def _family_keys() -> dict[str, set[str]]:
    """Top-level module names of each registered family, from its smallest preset built on the meta device."""
    out = {}
    for family, cls in _FAMILIES.items():
        cfgs = [c for c in _PRESETS.values() if c.family == family]
        if cfgs:
            with torch.device("meta"):
                out[family] = {k.split(".")[0] for k in cls(min(cfgs, key=lambda c: c.estimate_params() or 0))
                               .state_dict()}
    return out


def _mismatch(cfg, model: nn.Module, header: dict, file: Path) -> str:
    """A few lines saying why the weights in `file` do not fit the model config.json describes."""
    tops = {k.split(".")[0] for k in header}
    scores = {f: len(tops & keys) / len(tops | keys) for f, keys in _family_keys().items()}
    guess = max(scores, key=scores.get) if scores else cfg.family
    if guess != cfg.family:
        return (f"config.json says {cfg.family}; the weights in {file} look like a {guess} "
                f"(top-level tensors: {', '.join(sorted(tops)[:6])})")
    own = model.state_dict()
    stored = {_storage(t) for k, t in own.items() if k in header}  # tied weights are stored once
    missing = [k for k, t in own.items() if k not in header and _storage(t) not in stored]
    extra = [k for k in header if k not in own]
    shapes = [f"{k}: file {header[k]['shape']} vs config {list(own[k].shape)}" for k in own
              if k in header and list(own[k].shape) != header[k]["shape"]]
    parts = [f"{len(missing)} missing (e.g. {', '.join(missing[:3])})" if missing else "",
             f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})" if extra else "",
             f"{len(shapes)} with other shapes (e.g. {'; '.join(shapes[:3])})" if shapes else ""]
    return (f"the weights in {file} do not match its config.json ({cfg.family}): "
            + "; ".join(p for p in parts if p))


def _storage(t: torch.Tensor) -> tuple:
    return t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)


def warn_non_finite(model: nn.Module, where: Path) -> list[str]:
    """Log a warning naming the floating-point tensors that hold NaN or infinite values; returns their names."""
    seen, bad = set(), []
    for k, t in model.state_dict().items():
        if t.is_floating_point() and _storage(t) not in seen and not torch.isfinite(t).all():
            bad.append(k)
        seen.add(_storage(t))
    if bad:
        log.warning("%s: %d tensor(s) hold NaN or infinite values: %s%s", where, len(bad), ", ".join(bad[:10]),
                    " ..." if len(bad) > 10 else "")
    return bad


def load_pretrained(path: str | os.PathLike, **overrides) -> nn.Module:
    """Rebuild a model from a folder written by save_pretrained; weights load bit-exactly."""
    path = Path(path)
    cfg = read_config(path)
    if overrides:
        cfg = cfg.replace(**overrides)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: a model folder holds config.json and {WEIGHTS}")
    header = weights_header(weights)
    check_fits(cfg, overrides)
    model = model_class(cfg.family)(cfg)
    try:
        load_model(model, str(weights), strict=True)
    except RuntimeError:
        raise ValueError(_mismatch(cfg, model, header, weights)) from None
    except SafetensorError as e:
        raise ValueError(f"{weights} cannot be read as safetensors: {e}") from None
    warn_non_finite(model, weights)
    if (path / "tokenizer").is_dir():
        from .tokenizers import load_tokenizer

        model.tokenizer = load_tokenizer(path / "tokenizer")
    return model
