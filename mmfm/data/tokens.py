"""Token files on disk and random windows streamed from them (no tokenization in the training loop).

A token folder holds `train.bin` and `val.bin` (uint16 ids), `tokenizer/` and `meta.json`:

    build_token_files(text, "data/shakespeare/char", tokenizer="char")
    train = TokenWindows("data/shakespeare/char/train.bin", block_size=256, batch_size=32, seed=0)
    x, y = train.batch(step)  # (B, T) each; a pure function of (seed, step)
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import atomic_write_text

log = logging.getLogger(__name__)
META = "meta.json"


def write_tokens(path: str | os.PathLike, ids) -> Path:
    """Write token ids as a flat uint16 array (ids must be < 65536)."""
    arr = np.asarray(ids, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= 2**16):
        raise ValueError(f"token ids must lie in [0, 65535] for uint16 files, got [{arr.min()}, {arr.max()}]")
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    arr.astype(np.uint16).tofile(tmp)
    os.replace(tmp, path)
    return path


def read_tokens(path: str | os.PathLike) -> np.memmap:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no token file at {path}; build it first (e.g. python datasets/shakespeare.py)")
    return np.memmap(path, dtype=np.uint16, mode="r")


def train_tokenizer(text: str, kind: str, vocab_size: int = 4096):
    from ..tokenizers import ByteBPETokenizer, CharTokenizer

    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "bpe":
        return ByteBPETokenizer.train([text[i:i + 100_000] for i in range(0, len(text), 100_000)], vocab_size)
    raise ValueError(f"unknown tokenizer kind {kind!r}; choose 'char' or 'bpe'")


def encode_documents(tok, docs: list[str], separator: str | None = None) -> np.ndarray:
    """Token ids of documents laid end to end, each followed by `separator` (text) or, without one, by the
    tokenizer's end-of-text token (GPT-2's layout); "\n\n" when the tokenizer has no end-of-text token."""
    eos = getattr(tok, "eos_id", None) if separator is None else None
    if separator is None and eos is None:
        separator = "\n\n"
    texts = [d + separator for d in docs] if separator is not None else docs
    rows = tok.encode_many(texts) if hasattr(tok, "encode_many") else [tok.encode(t) for t in texts]
    tail = [] if separator is not None else [eos]
    return np.fromiter((i for row in rows for i in (*row, *tail)), dtype=np.int64)


def write_token_folder(splits: dict[str, list[str]], out: str | os.PathLike, tok, meta: dict,
                       separator: str | None = None, min_tokens: int = 0) -> dict:
    """<out>/{split}.bin for each split (documents joined by `encode_documents`), <out>/tokenizer/ and
    <out>/meta.json (`meta` plus the tokenizer, its vocabulary and each split's document and token counts).
    Everything is encoded and checked (ids fit uint16, each split holds >= `min_tokens`) before `out` is made."""
    from .formats import DataFormatError

    if tok.vocab_size > 2**16:
        raise ValueError(f"token files hold uint16 ids: a tokenizer of {tok.vocab_size:,} tokens does not fit")
    try:
        ids = {split: encode_documents(tok, docs, separator) for split, docs in splits.items()}
    except ValueError as e:  # e.g. a character a char tokenizer (from a --preset folder) never saw
        raise DataFormatError(f"{meta.get('source') or out}: cannot encode with this {tok.kind} tokenizer: {e}") from None
    for split, arr in ids.items():
        if len(arr) < min_tokens:
            raise DataFormatError(f"{meta.get('source') or out}: the {split} split holds {len(arr)} tokens, fewer "
                                  f"than block_size + 1 = {min_tokens}: give more text, a larger split fraction "
                                  "or a smaller block_size")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(out / "tokenizer")
    meta = {**meta, "tokenizer": meta.get("tokenizer", tok.kind), "vocab_size": tok.vocab_size}
    for split, docs in splits.items():
        write_tokens(out / f"{split}.bin", ids[split])
        meta[f"{split}_documents"], meta[f"{split}_chars"] = len(docs), sum(len(d) for d in docs)
        meta[f"{split}_tokens"] = len(ids[split])
    atomic_write_text(out / META, json.dumps(meta, indent=2))
    log.info("wrote %s: %s", out, {k: v for k, v in meta.items() if k.endswith(("_tokens", "vocab_size"))})
    return meta


def build_token_files(text: str, out: str | os.PathLike, tokenizer: str = "char", val_fraction: float = 0.1,
                      vocab_size: int = 4096, source: str = "") -> dict:
    """Split `text` by position (first 1 - val_fraction for training, the rest held out), train a
    tokenizer on the training part, write train.bin / val.bin / tokenizer/ / meta.json under `out`."""
    cut = int(len(text) * (1 - val_fraction))
    train_text, val_text = text[:cut], text[cut:]
    # a char vocabulary covers the whole text (as nanoGPT's): a held-out character must stay encodable
    tok = train_tokenizer(text if tokenizer == "char" else train_text, tokenizer, vocab_size)
    meta = {"source": source, "tokenizer": tokenizer, "chars": len(text), "distinct_chars": len(set(text)),
            "val_fraction": val_fraction}
    return write_token_folder({"train": [train_text], "val": [val_text]}, out, tok, meta, separator="")


def read_meta(folder: str | os.PathLike) -> dict:
    path = Path(folder) / META
    if not path.is_file():
        raise FileNotFoundError(f"no {META} in {folder}; build the token folder first")
    return json.loads(path.read_text())


class TokenWindows(torch.utils.data.IterableDataset):
    """An endless stream of random (x, y) windows, y = x shifted by one, each (B, T) int64.

    The batch of global step i is `batch(i)`, a pure function of (seed, i): resuming at step i only
    needs `load_state_dict({"step": i})` (or `start_step=i`). Use with DataLoader(batch_size=None).
    """

    def __init__(self, path, block_size: int, batch_size: int, seed: int = 0, start_step: int = 0):
        super().__init__()
        self.path, self.block_size, self.batch_size, self.seed = Path(path), block_size, batch_size, seed
        self.step = start_step
        n = len(read_tokens(self.path))
        if n <= block_size:
            raise ValueError(f"{self.path} holds {n} tokens, fewer than block_size + 1 = {block_size + 1}")

    def batch(self, step: int, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """The windows of global step `step` on distributed rank `rank` (each rank its own stream)."""
        data = read_tokens(self.path)  # a memmap: cheap to open, nothing is read into memory
        rng = np.random.default_rng([self.seed, step] if rank == 0 else [self.seed, step, rank])
        starts = rng.integers(0, len(data) - self.block_size, size=self.batch_size)
        idx = starts[:, None] + np.arange(self.block_size + 1)  # (B, T + 1)
        chunk = torch.from_numpy(data[idx].astype(np.int64))  # (B, T + 1)
        return chunk[:, :-1], chunk[:, 1:]

    def __iter__(self):
        while True:
            out = self.batch(self.step)
            self.step += 1
            yield out

    def state_dict(self) -> dict:
        return {"step": self.step, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.seed = int(state["step"]), int(state.get("seed", self.seed))


def val_windows(path, block_size: int, max_tokens: int | None = None) -> torch.utils.data.TensorDataset:
    """Fixed, non-overlapping (x, y) windows covering the split (or `max_tokens` of it, spread evenly)."""
    data = read_tokens(path)
    n_win = (len(data) - 1) // block_size
    if n_win < 1:
        raise ValueError(f"{path} holds {len(data)} tokens, fewer than block_size + 1 = {block_size + 1}")
    if max_tokens is not None:
        keep = max(1, min(n_win, max_tokens // block_size))
        starts = np.linspace(0, n_win - 1, keep).round().astype(np.int64) * block_size
    else:
        starts = np.arange(n_win, dtype=np.int64) * block_size
    idx = starts[:, None] + np.arange(block_size + 1)  # (N, T + 1)
    chunk = torch.from_numpy(data[idx].astype(np.int64))  # (N, T + 1)
    return torch.utils.data.TensorDataset(chunk[:, :-1], chunk[:, 1:])
