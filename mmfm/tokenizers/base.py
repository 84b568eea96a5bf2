"""One small tokenizer interface: encode, decode, encode_batch (padding + mask), special tokens, save/load."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)
CONFIG = "tokenizer_config.json"


class Tokenizer:
    """Subclasses implement `_encode`, `decode`, `vocab_size`, `special_tokens`, `_save`, `_load`."""

    kind = ""
    pad_token = "<|pad|>"
    eos_token = "<|endoftext|>"
    bos_token: str | None = None

    # --- implemented by subclasses -------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def token_to_id(self, token: str) -> int | None:
        raise NotImplementedError

    def _save(self, path: Path) -> dict:
        raise NotImplementedError

    @classmethod
    def _load(cls, path: Path, meta: dict) -> "Tokenizer":
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------
    @property
    def pad_id(self) -> int:
        return self.token_to_id(self.pad_token)

    @property
    def eos_id(self) -> int:
        return self.token_to_id(self.eos_token)

    @property
    def bos_id(self) -> int | None:
        return self.token_to_id(self.bos_token) if self.bos_token else None

    def encode_batch(self, texts: list[str], max_len: int | None = None, add_special: bool = True,
                     pad_to_max: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ids (B, T) and a bool mask (B, T), True on real tokens. With add_special,
        rows are [bos] + ids + [eos]; rows longer than max_len are truncated (eos kept) with a warning."""
        if isinstance(texts, str):
            raise TypeError("encode_batch takes a list of strings; use encode() for one string")
        rows = []
        for text in texts:
            ids = self.encode(text)
            if add_special:
                ids = ([self.bos_id] if self.bos_id is not None else []) + ids + [self.eos_id]
            if max_len is not None and len(ids) > max_len:
                log.warning("text of %d tokens truncated to %d: %.40r...", len(ids), max_len, text)
                ids = ids[: max_len - 1] + [self.eos_id] if add_special else ids[:max_len]
            rows.append(ids)
        width = max_len if (pad_to_max and max_len) else max((len(r) for r in rows), default=0)
        out = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = True
        return out, mask

    def __call__(self, texts, **kw):
        return self.encode_batch([texts] if isinstance(texts, str) else list(texts), **kw)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, **self._save(path)}
        (path / CONFIG).write_text(json.dumps(meta, indent=2))
        return path


_KINDS: dict[str, type[Tokenizer]] = {}


def register_tokenizer(cls):
    _KINDS[cls.kind] = cls
    return cls


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    path = Path(path)
    cfg = path / CONFIG
    if not cfg.is_file():
        raise FileNotFoundError(f"no {CONFIG} in {path}")
    meta = json.loads(cfg.read_text())
    if meta.get("kind") not in _KINDS:
        raise ValueError(f"unknown tokenizer kind {meta.get('kind')!r}; known: {sorted(_KINDS)}")
    return _KINDS[meta["kind"]]._load(path, meta)
