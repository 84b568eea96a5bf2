"""Character-level tokenizer: one id per character seen in the training text, specials after them."""
from __future__ import annotations

import json
import re
from pathlib import Path

from .base import Tokenizer, register_tokenizer


@register_tokenizer
class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: str | list[str], special_tokens: tuple[str, ...] = ()):
        chars = sorted(set(chars))
        specials = [self.pad_token, self.eos_token] + [s for s in special_tokens if s not in (self.pad_token, self.eos_token)]
        self.itos = chars + specials
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.special_tokens = {s: self.stoi[s] for s in specials}
        self._split = re.compile("(" + "|".join(re.escape(s) for s in specials) + ")")

    @classmethod
    def train(cls, text: str, special_tokens: tuple[str, ...] = ()) -> "CharTokenizer":
        return cls(list(set(text)), special_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def token_to_id(self, token: str) -> int | None:
        return self.stoi.get(token)

    def encode(self, text: str) -> list[int]:
        ids = []
        for part in self._split.split(text):
            if part in self.special_tokens:
                ids.append(self.special_tokens[part])
                continue
            try:
                ids.extend(self.stoi[ch] for ch in part)
            except KeyError as e:
                raise ValueError(f"character {e.args[0]!r} is not in this char tokenizer's vocabulary") from None
        return ids

    def decode(self, ids) -> str:
        return "".join(self.itos[int(i)] for i in ids)

    def _save(self, path: Path) -> dict:
        n_chars = len(self.itos) - len(self.special_tokens)
        return {"chars": self.itos[:n_chars], "special_tokens": list(self.special_tokens)}

    @classmethod
    def _load(cls, path: Path, meta: dict) -> "CharTokenizer":
        return cls(meta["chars"], tuple(meta["special_tokens"]))
