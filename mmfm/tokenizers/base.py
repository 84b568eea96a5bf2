"""One small tokenizer interface: encode, decode, encode_batch (padding + mask), special tokens, save/load.

Special tokens come from text only when the caller asks: `encode("a<|endoftext|>", allowed_special="all")`
(or a set of token strings) maps the string to its id; by default it is encoded as plain text, so user
text cannot end a document or forge a chat turn (as tiktoken's `allowed_special`). Code that needs a
special id builds it explicitly (`tok.eos_id`, `tok.token_to_id("<|end|>")`).
"""
from __future__ import annotations

import json
import logging
import operator
import os
import re
from pathlib import Path
from typing import Collection, Literal

import torch

log = logging.getLogger(__name__)
CONFIG = "tokenizer_config.json"


AllowedSpecial = Literal["all"] | Collection[str]


def check_text(text, name: str = "text") -> str:
    """`text` if it is a str of valid Unicode; a TypeError for bytes and other types, a ValueError naming the
    position of a lone surrogate (text that cannot be written as UTF-8)."""
    if isinstance(text, (bytes, bytearray)):
        raise TypeError(f"{name}: expected a str, got {type(text).__name__}; decode it first "
                        "(e.g. data.decode('utf-8'))")
    if not isinstance(text, str):
        raise TypeError(f"{name}: expected a str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name}: character {e.start} ({text[e.start]!r}) is a lone surrogate, not valid Unicode "
                         "text; read the file as UTF-8 (errors='replace' to keep going)") from None
    return text


def split_on(text: str, tokens: Collection[str], flags: int = 0) -> list[str]:
    """`text` cut around each occurrence of the `tokens` strings (longest first); those are items of their own."""
    if not tokens:
        return [text]
    pattern = "(" + "|".join(map(re.escape, sorted(tokens, key=len, reverse=True))) + ")"
    return [p for p in re.split(pattern, text, flags=flags) if p]


class Tokenizer:
    """Subclasses implement `_encode`, `_decode`, `vocab_size`, `special_tokens` ({string: id}), `token_to_id`,
    `_save`, `_load`; `encode` and `decode` check their input here."""

    kind = ""
    pad_token = "<|pad|>"
    eos_token = "<|endoftext|>"
    bos_token: str | None = None

    # --- implemented by subclasses -------------------------------------------------------
    def _encode(self, text: str, allowed: frozenset[str]) -> list[int]:
        """Ids of `text`; the special-token strings in `allowed` map to their ids, all others are plain text."""
        raise NotImplementedError

    def _decode(self, ids: list[int]) -> str:
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
    def encode(self, text: str, allowed_special: AllowedSpecial = ()) -> list[int]:
        """Token ids of `text` (a str). Special-token strings in it are plain text unless listed in
        `allowed_special` ("all": every special token of this tokenizer)."""
        return self._encode(check_text(text), self._allowed(allowed_special))

    def decode(self, ids) -> str:
        """Text of token ids (ints, or an integer tensor); an id outside the vocabulary is a ValueError."""
        return self._decode(self.check_ids(ids))

    def check_ids(self, ids) -> list[int]:
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1) if ids.dim() == 0 else ids
        try:
            out = [operator.index(i) for i in ids]
        except TypeError:
            raise TypeError(f"ids: expected token ids (ints or an integer tensor), got {ids!r:.80}") from None
        bad = next((i for i in out if not 0 <= i < self.vocab_size), None)
        if bad is not None:
            raise ValueError(f"ids: token id {bad} is outside this tokenizer's vocabulary [0, {self.vocab_size})")
        return out

    def _allowed(self, allowed_special) -> frozenset[str]:
        if allowed_special == "all":
            return frozenset(self.special_tokens)
        if isinstance(allowed_special, str):
            raise TypeError(f"allowed_special: expected 'all' or a collection of special-token strings, "
                            f"got the string {allowed_special!r} (use {{{allowed_special!r}}})")
        unknown = set(allowed_special) - set(self.special_tokens)
        if unknown:
            raise ValueError(f"allowed_special: {sorted(unknown)} are not special tokens of this tokenizer; "
                             f"it has {sorted(self.special_tokens)}")
        return frozenset(allowed_special)


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
        if max_len is not None and (not isinstance(max_len, int) or isinstance(max_len, bool)):
            raise TypeError(f"max_len must be None or an int >= 1, got {max_len!r}")
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be >= 1 (None: no limit), got {max_len}")
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
        """Write the tokenizer folder whole: into a temporary sibling folder, then swapped in for `path`."""
        from ..checkpoint import atomic_folder

        path = Path(path)
        with atomic_folder(path, "tokenizer") as tmp:
            meta = {"kind": self.kind, **self._save(tmp)}
            (tmp / CONFIG).write_text(json.dumps(meta, indent=2))
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
    try:
        meta = json.loads(cfg.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg}: not a JSON tokenizer config ({e})") from None
    if not isinstance(meta, dict) or meta.get("kind") not in _KINDS:
        kind = meta.get("kind") if isinstance(meta, dict) else None
        raise ValueError(f"{cfg}: unknown tokenizer kind {kind!r}; known: {sorted(_KINDS)}")
    return _KINDS[meta["kind"]]._load(path, meta)
