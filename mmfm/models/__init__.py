"""Model families; importing this registers every preset."""
from .base import Model
from .bert import BERT, BERTConfig
from .clip import CLIP, CLIPConfig
from .dit import DiT, DiTConfig
from .gan import GANConfig, Generator
from .gpt import GPT, GPTConfig
from .t5 import T5, T5Config
from .vit import ViT, ViTConfig
from .vlm import VLM, VLMConfig

__all__ = ["Model", "BERT", "BERTConfig", "CLIP", "CLIPConfig", "DiT", "DiTConfig", "GANConfig", "Generator", "GPT", "GPTConfig", "T5",
           "T5Config", "ViT", "ViTConfig", "VLM", "VLMConfig"]
