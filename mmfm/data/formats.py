"""What the data layer shares across kinds of data: the error for an unknown layout (listing the accepted
formats with a short example of each), JSONL and UTF-8 readers that name the file, line and byte offset of a
bad record, and one deterministic split that drops exact duplicates across splits.

Each kind of data (text, chat, preferences, prompts, image-text, labelled images) keeps its own detection in
its own module and calls these."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)


class DataFormatError(ValueError):
    """A user's data path or file that mmfm cannot read: the message names the file and what is wrong."""


@dataclass(frozen=True)
class Format:
    """One accepted layout of a kind of data: a name, how it is recognised, and a three-line example."""

    name: str
    detect: str  # how it is recognised, in words ("a .jsonl file whose records have 'text'")
    example: str  # three short lines a user can copy


def unknown_format(path: str | os.PathLike, kind: str, formats: Sequence[Format], why: str = "") -> DataFormatError:
    """The error for a path that matches no accepted layout: the accepted formats, each with its example."""
    lines = [f"{path}: not a {kind} layout mmfm reads{(' (' + why + ')') if why else ''}. Accepted formats:"]
    for f in formats:
        lines.append(f"  - {f.name}: {f.detect}, e.g.")
        lines += [f"        {ex}" for ex in f.example.strip().splitlines()[:3]]
    return DataFormatError("\n".join(lines))


def require_path(path: str | os.PathLike, what: str = "--data") -> Path:
    """The path as a Path; a clear FileNotFoundError when it is missing, DataFormatError when it is empty."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} {path}: no such file or folder")
    if p.is_file() and p.stat().st_size == 0:
        raise DataFormatError(f"{what} {path}: the file is empty")
    if p.is_dir() and not any(p.iterdir()):
        raise DataFormatError(f"{what} {path}: the folder is empty")
    return p


def read_utf8(path: str | os.PathLike) -> str:
    """A file's text; text that is not UTF-8 fails naming the file and the byte offset of the first bad byte."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: not UTF-8 text: byte {e.start} (0x{data[e.start]:02x}) cannot be decoded "
                              f"({e.reason}); re-encode the file as UTF-8 (e.g. iconv -t utf-8)") from None


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = (), any_of: Sequence[Sequence[str]] = ()) -> list[dict]:
    """Records of a JSON Lines file (blank lines skipped). A line that is not a JSON object, or lacks a field in
    `required` (or every field set of `any_of`), fails with the file name and the 1-based line number."""
    text = read_utf8(path)
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}): {line[:80]!r}") from None
        if not isinstance(rec, dict):
            raise DataFormatError(f"{path}:{lineno}: each line must be a JSON object, got {type(rec).__name__}")
        missing = [k for k in required if k not in rec]
        if missing:
            raise DataFormatError(f"{path}:{lineno}: missing field(s) {missing}; the record has {sorted(rec)}")
        if any_of and not any(all(k in rec for k in keys) for keys in any_of):
            shapes = " or ".join("{" + ", ".join(keys) + "}" for keys in any_of)
            raise DataFormatError(f"{path}:{lineno}: expected fields {shapes}; the record has {sorted(rec)}")
        records.append(rec)
    if not records:
        raise DataFormatError(f"{path}: no records (the file holds only blank lines)")
    return records


def fingerprint(item: Any) -> str:
    """A stable content hash: bytes, str, numpy arrays (with dtype and shape) and JSON-able values."""
    h = hashlib.sha1()
    if isinstance(item, np.ndarray):
        h.update(f"{item.dtype}{item.shape}".encode())
        h.update(np.ascontiguousarray(item).tobytes())
    elif isinstance(item, (bytes, bytearray)):
        h.update(item)
    elif isinstance(item, str):
        h.update(item.encode("utf-8", "surrogatepass"))
    else:
        h.update(json.dumps(item, sort_keys=True, default=str).encode())
    return h.hexdigest()


@dataclass
class Splits:
    """Indices of each split into the examples, and what the split dropped."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    duplicates_dropped: int  # examples dropped because an identical one is in an earlier split (test > val > train)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test),
                "duplicates_dropped": self.duplicates_dropped}


def split_examples(n: int, key: Callable[[int], Any] | None = None, val_fraction: float = 0.1,
                   test_fraction: float = 0.0, seed: int = 0) -> Splits:
    """A deterministic split of `n` examples by a seeded permutation (numpy default_rng(seed)). With `key`
    (example index -> content), exact duplicates are kept in one split only: a copy of a test example is dropped
    from val and train, a copy of a val example from train, and copies within a split are kept once."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) "
                         "and leave something to train on")
    perm = np.random.default_rng(seed).permutation(n)
    n_test, n_val = int(round(n * test_fraction)), int(round(n * val_fraction))
    parts = {"test": perm[:n_test], "val": perm[n_test:n_test + n_val], "train": perm[n_test + n_val:]}
    dropped = 0
    if key is not None:
        seen: set[str] = set()
        for name in ("test", "val", "train"):
            keep = []
            for i in parts[name]:
                fp = fingerprint(key(int(i)))
                if fp in seen:
                    dropped += 1
                    continue
                seen.add(fp)
                keep.append(i)
            parts[name] = np.asarray(keep, dtype=np.int64)
    out = Splits(np.sort(parts["train"]), np.sort(parts["val"]), np.sort(parts["test"]), dropped)
    log.info("split (seed %d): %s", seed, out.sizes())
    return out
