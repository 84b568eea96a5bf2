"""Any Hugging Face `tokenizer.json` (GPT-2's, a Llama's, one trained with the `tokenizers` library) behind
mmfm's tokenizer interface.

    tok = load_hf_tokenizer("gpt2/tokenizer.json")   # or the folder that holds it
    tok.encode("Hello"), tok.eos_id                   # eos/pad/bos from a tokenizer_config.json beside it, if any

The special tokens come from HF's `tokenizer_config.json` next to the file when there is one (its
`eos_token`, `pad_token`, `bos_token`); otherwise the end-of-text token is the first added special token
among the usual names (`<|endoftext|>`, `</s>`, `<eos>`, `<|end_of_text|>`). Saved with a model, the
file and the chosen special tokens travel in the model's `tokenizer/` folder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizers import Tokenizer as RustTokenizer

from .base import register_tokenizer
from .bpe import ByteBPETokenizer

FILE = "tokenizer.json"
_EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>")
_PAD_NAMES = ("<pad>", "<|pad|>", "[PAD]")


@register_tokenizer
class HFJsonTokenizer(ByteBPETokenizer):
    """A `tokenizers` library Tokenizer read from a tokenizer.json, with its own special-token names."""

    kind = "hf"

    def __init__(self, hf: RustTokenizer, eos_token: str | None = None, pad_token: str | None = None,
                 bos_token: str | None = None):
        super().__init__(hf)
        self.eos_token, self.pad_token, self.bos_token = eos_token, pad_token, bos_token

    @property
    def eos_id(self) -> int | None:
        return self.token_to_id(self.eos_token) if self.eos_token else None

    @property
    def pad_id(self) -> int:
        """The pad token's id; without one, the end-of-text id (GPT-2's habit), else 0 (padding is masked)."""
        pad = self.token_to_id(self.pad_token) if self.pad_token else None
        return pad if pad is not None else (self.eos_id if self.eos_id is not None else 0)

    def _save(self, path: Path) -> dict:
        return {**super()._save(path), "eos_token": self.eos_token, "pad_token": self.pad_token,
                "bos_token": self.bos_token}

    @classmethod
    def _load(cls, path: Path, meta: dict) -> "HFJsonTokenizer":
        return cls(RustTokenizer.from_file(str(path / meta["file"])), meta.get("eos_token"), meta.get("pad_token"),
                   meta.get("bos_token"))


def _token_name(value) -> str | None:
    """HF writes a special token as a string or as {"content": ..., ...}."""
    return value.get("content") if isinstance(value, dict) else value


def _special_tokens(hf: RustTokenizer, config: Path) -> dict[str, str | None]:
    names = {"eos_token": None, "pad_token": None, "bos_token": None}
    if config.is_file():
        try:
            cfg = json.loads(config.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{config}: not valid JSON ({e.msg} at line {e.lineno})") from None
        names.update({k: _token_name(cfg.get(k)) for k in names if cfg.get(k)})
    added = {t.content for t in hf.get_added_tokens_decoder().values() if t.special}
    if names["eos_token"] is None:
        names["eos_token"] = next((t for t in _EOS_NAMES if t in added), None)
    if names["pad_token"] is None:
        names["pad_token"] = next((t for t in _PAD_NAMES if t in added), None)
    return {k: v if v is not None and hf.token_to_id(v) is not None else None for k, v in names.items()}


def load_hf_tokenizer(path: str | os.PathLike) -> HFJsonTokenizer:
    """A tokenizer.json file (or a folder holding one) as an mmfm tokenizer."""
    path = Path(path).expanduser()
    file = path / FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"tokenizer {path}: no such file (expected a Hugging Face {FILE} or its folder)")
    try:
        hf = RustTokenizer.from_file(str(file))
    except Exception as e:  # the Rust side raises a plain Exception for any malformed file
        raise ValueError(f"tokenizer {file}: not a Hugging Face {FILE} the tokenizers library reads ({e})") from None
    return HFJsonTokenizer(hf, **_special_tokens(hf, file.parent / "tokenizer_config.json"))


def attach_tokenizer(model, tokenizer) -> None:
    """Give `model` a tokenizer (an mmfm Tokenizer, or a tokenizer.json path / its folder) that it saves and
    generates with; its vocabulary must fit the model's embedding."""
    tok = load_hf_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
    vocab = model.config.vocab_size
    if tok.vocab_size > vocab:
        raise ValueError(f"tokenizer {tokenizer}: {tok.vocab_size:,} tokens do not fit the model's vocab_size {vocab:,}")
    model.tokenizer = tok
