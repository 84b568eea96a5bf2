"""Model families; importing this registers every preset."""
from .base import Model
from .clip import CLIP, CLIPConfig
from .dit import DiT, DiTConfig
from .gpt import GPT, GPTConfig
from .vit import ViT, ViTConfig

__all__ = ["Model", "CLIP", "CLIPConfig", "DiT", "DiTConfig", "GPT", "GPTConfig", "ViT", "ViTConfig"]
