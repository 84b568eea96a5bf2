"""open_clip's bundled CLIP BPE (lower-cased, whitespace-cleaned; vocabulary ships with open_clip)."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from .base import Tokenizer, register_tokenizer, split_on


@register_tokenizer
class ClipTokenizer(Tokenizer):
    kind = "clip"
    eos_token = "<end_of_text>"
    bos_token = "<start_of_text>"

    def __init__(self, context_length: int = 77):
        from open_clip.tokenizer import SimpleTokenizer

        self.tok = SimpleTokenizer(context_length=context_length)
        self.context_length = context_length

    @property
    def vocab_size(self) -> int:
        return len(self.tok.encoder)

    @property
    def pad_id(self) -> int:
        return 0  # open_clip pads with 0

    @property
    def special_tokens(self) -> dict[str, int]:
        return {self.bos_token: self.tok.sot_token_id, self.eos_token: self.tok.eot_token_id}

    def token_to_id(self, token: str) -> int | None:
        return self.tok.encoder.get(token)

    def _encode(self, text: str, allowed: frozenset[str]) -> list[int]:
        """open_clip's BPE lower-cases text before it finds its special tokens: they are cut out here in any
        case; one not allowed is encoded as its characters ('<' apart from the rest, as plain text splits)."""
        ids = []
        for part in split_on(text, self.special_tokens, flags=re.IGNORECASE):
            special = part.lower() if part.lower() in self.special_tokens else None
            if special in allowed:
                ids.append(self.special_tokens[special])
            else:
                ids += self.tok.encode(part[:1]) + self.tok.encode(part[1:]) if special else self.tok.encode(part)
        return ids

    def _decode(self, ids: list[int]) -> str:
        ids = [i for i in ids if i not in (0, self.tok.sot_token_id, self.tok.eot_token_id)]
        return self.tok.decode(ids).strip()

    def encode_batch(self, texts, max_len=None, add_special=True, pad_to_max=True) -> tuple[torch.Tensor, torch.Tensor]:
        """Like open_clip's tokenizer: [sot] ids [eot] padded with 0 to the context length."""
        return super().encode_batch(texts, self.context_length if max_len is None else max_len, add_special,
                                    pad_to_max)

    def _save(self, path: Path) -> dict:
        return {"context_length": self.context_length}

    @classmethod
    def _load(cls, path: Path, meta: dict) -> "ClipTokenizer":
        return cls(meta.get("context_length", 77))
