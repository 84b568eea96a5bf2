"""The shared Transformer stack: every mmfm model is this plus an embedding, a mask, a conditioning and a head."""
from .attention import Attention, KVCache, build_attn_mask
from .decode import StackDecoder
from .embed import LabelEmbedder, PatchEmbed, TimestepEmbedder, patchify, unpatchify
from .mlp import Mlp, SwiGLU, build_mlp
from .modulation import AdaLN, modulate
from .norm import RMSNorm, build_norm
from .pos import LearnedPosEmbed, RotaryEmbedding, apply_rotary, sincos_2d
from .transformer import Block, StackConfig, Transformer

__all__ = [
    "Attention", "KVCache", "build_attn_mask", "LabelEmbedder", "PatchEmbed", "TimestepEmbedder",
    "patchify", "unpatchify", "Mlp", "SwiGLU", "build_mlp", "AdaLN", "modulate", "RMSNorm", "build_norm",
    "LearnedPosEmbed", "RotaryEmbedding", "apply_rotary", "sincos_2d",
    "Block", "StackConfig", "Transformer", "StackDecoder",
]
