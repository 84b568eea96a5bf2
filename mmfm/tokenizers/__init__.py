"""Tokenizers behind one interface: char-level, byte-level BPE (HF tokenizers), CLIP BPE (open_clip)."""
from .base import Tokenizer, load_tokenizer, register_tokenizer
from .bpe import ByteBPETokenizer
from .char import CharTokenizer
from .clip_bpe import ClipTokenizer
from .hf import HFJsonTokenizer, load_hf_tokenizer  # any Hugging Face tokenizer.json

__all__ = ["Tokenizer", "load_tokenizer", "register_tokenizer", "ByteBPETokenizer", "CharTokenizer", "ClipTokenizer",
           "HFJsonTokenizer", "load_hf_tokenizer"]
