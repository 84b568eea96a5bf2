"""Byte-level BPE (GPT-2 style) trained with HF `tokenizers`; lossless on any unicode text."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from .base import Tokenizer, check_text, register_tokenizer, split_on


@register_tokenizer
class ByteBPETokenizer(Tokenizer):
    kind = "bpe"

    def __init__(self, hf: HFTokenizer):
        self.hf = hf

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096, special_tokens: tuple[str, ...] = (),
              min_frequency: int = 2) -> "ByteBPETokenizer":
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        specials = [cls.pad_token, cls.eos_token] + [s for s in special_tokens if s not in (cls.pad_token, cls.eos_token)]
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        hf.train_from_iterator(texts, trainer=trainer)
        return cls(hf)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @property
    def special_tokens(self) -> dict[str, int]:
        return {t.content: i for i, t in self.hf.get_added_tokens_decoder().items()}

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    def _has_special(self, text: str, specials=None) -> bool:
        return any(s in text for s in (specials if specials is not None else self.special_tokens))

    def _plain(self, text: str) -> list[int]:
        """`text` through the normalizer, pre-tokenizer and BPE model without matching added tokens, so a
        special-token string in it is encoded as the plain text it is."""
        hf = self.hf
        text = hf.normalizer.normalize_str(text) if hf.normalizer is not None else text
        pieces = [p for p, _ in hf.pre_tokenizer.pre_tokenize_str(text)] if hf.pre_tokenizer is not None else [text]
        return [t.id for p in pieces for t in hf.model.tokenize(p)]

    def _encode(self, text: str, allowed: frozenset[str]) -> list[int]:
        ids = []
        for part in split_on(text, allowed):
            if part in allowed:
                ids.append(self.special_tokens[part])
            elif self._has_special(part):
                ids += self._plain(part)
            else:
                ids += self.hf.encode(part, add_special_tokens=False).ids
        return ids

    def encode_many(self, texts: list[str], allowed_special=()) -> list[list[int]]:
        """Fast parallel encoding of many texts (no padding); special strings as in `encode`."""
        texts, specials = [check_text(t, f"texts[{i}]") for i, t in enumerate(texts)], list(self.special_tokens)
        if any(self._has_special(t, specials) for t in texts):
            return [self.encode(t, allowed_special) for t in texts]
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def _decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False)

    def _save(self, path: Path) -> dict:
        self.hf.save(str(path / "tokenizer.json"))
        return {"file": "tokenizer.json"}

    @classmethod
    def _load(cls, path: Path, meta: dict) -> "ByteBPETokenizer":
        return cls(HFTokenizer.from_file(str(path / meta["file"])))
