"""Character-level tokenizer: one id per character seen in the training text, specials after them."""
from __future__ import annotations

from pathlib import Path

from .base import Tokenizer, register_tokenizer, split_on


@register_tokenizer
class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: str | list[str], special_tokens: tuple[str, ...] = ()):
        chars = sorted(set(chars))
        specials = [self.pad_token, self.eos_token] + [s for s in special_tokens if s not in (self.pad_token, self.eos_token)]
        self.itos = chars + specials
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        self.special_tokens = {s: self.stoi[s] for s in specials}

    @classmethod
    def train(cls, text: str, special_tokens: tuple[str, ...] = ()) -> "CharTokenizer":
        return cls(list(set(text)), special_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def token_to_id(self, token: str) -> int | None:
        return self.stoi.get(token)

    def _encode(self, text: str, allowed: frozenset[str]) -> list[int]:
        ids = []
        for part in split_on(text, allowed):
            if part in allowed:
                ids.append(self.special_tokens[part])
                continue
            try:
                ids.extend(self.stoi[ch] for ch in part)
            except KeyError as e:
                raise ValueError(f"character {e.args[0]!r} is not in this char tokenizer's vocabulary") from None
        return ids

    def _decode(self, ids: list[int]) -> str:
        return "".join(self.itos[i] for i in ids)

    def _save(self, path: Path) -> dict:
        n_chars = len(self.itos) - len(self.special_tokens)
        return {"chars": self.itos[:n_chars], "special_tokens": list(self.special_tokens)}

    @classmethod
    def _load(cls, path: Path, meta: dict) -> "CharTokenizer":
        return cls(meta["chars"], tuple(meta["special_tokens"]))
