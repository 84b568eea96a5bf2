"""A vision-language model on the shared stack: an mmfm ViT image tower, a small projector, and a GPT.

Two fusions, one config switch (`fusion`):
- "prefix" (LLaVA-style early fusion): the projected image tokens enter the GPT's stream before the text;
- "cross": the text tokens attend to the projected image tokens through a cross-attention in every GPT block
  (the stack's `context_dim`).

    vlm = build_model("vlm-test")                       # or fusion="cross"
    logits = vlm(images (B, C, H, W), idx (B, T))       # (B, T, V): next-token logits over the text only

Tiling (`tiles=t`, as LLaVA-NeXT's "AnyRes"): the image is cut into t x t tiles of the tower's own size, the
tower encodes each tile, and the tiles' tokens (every token, or only each tile's class token with
`tile_tokens="cls"`) follow one another in raster order, each tile's with a learned tile embedding added.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..config import ModelConfig, check, opt
from ..registry import register_family, register_preset
from .base import Model
from .gpt import GPT, GPTConfig
from .vit import ViT, ViTConfig


@dataclass
class VLMConfig(ModelConfig):
    family = "vlm"
    fusion: str = opt("prefix", choices=("prefix", "cross"))
    # the image tower (an mmfm ViT without a head; every token after the final norm is passed on)
    img_size: int = opt(56, lo=1)  # the VQA canvases: 2 x 2 cells of 28 pixels
    tiles: int = opt(1, lo=1)  # > 1: the tower sees t x t tiles of img_size / t pixels each (AnyRes-style)
    tile_tokens: str = opt("all", choices=("all", "cls"))  # per tile: every token, or its class token only
    patch_size: int = opt(7, lo=1)
    in_chans: int = opt(1, lo=1)
    vision_width: int = opt(128, lo=1)
    vision_layers: int = opt(4, lo=1)
    vision_heads: int = opt(4, lo=1)
    vision_mlp: str = opt("gelu", choices=("gelu", "gelu_tanh", "quick_gelu", "swiglu"))
    vision_norm_eps: float = opt(1e-6, lo=0.0)
    vision_pre_norm: bool = False  # CLIP's image tower: True (ln_pre), with vision_patch_bias=False, eps 1e-5
    vision_patch_bias: bool = True
    projector: str = opt("mlp", choices=("mlp", "linear"))  # mlp: Linear-GELU-Linear (LLaVA-1.5)
    # the language model (a GPT; `context_dim` is set from the fusion)
    vocab_size: int = opt(256, lo=1)
    block_size: int = opt(128, lo=1)
    n_layer: int = opt(4, lo=1)
    n_head: int = opt(4, lo=1)
    n_embd: int = opt(128, lo=1)
    pos: str = opt("rope", choices=("learned", "rope"))
    norm: str = opt("rmsnorm", choices=("layernorm", "rmsnorm"))
    mlp: str = opt("gelu", choices=("gelu", "gelu_tanh", "swiglu"))
    bias: bool = False
    tie_weights: bool = True
    dropout: float = opt(0.0, lo=0.0, hi=1.0)

    def validate(self):
        super().validate()
        check(self.img_size % self.tiles == 0, f"img_size={self.img_size} must be divisible by tiles={self.tiles}")
        self.vision().validate()
        self.language().validate()
        if self.fusion == "prefix":
            check(self.image_tokens < self.block_size, f"the {self.image_tokens} image tokens leave no room for text "
                  f"in block_size={self.block_size}")

    @property
    def image_tokens(self) -> int:
        """Tokens the image contributes: per tile, the class token and every patch (or the class token only)."""
        per_tile = 1 if self.tile_tokens == "cls" else (self.img_size // self.tiles // self.patch_size) ** 2 + 1
        return self.tiles**2 * per_tile

    def vision(self) -> ViTConfig:
        return ViTConfig(img_size=self.img_size // self.tiles, patch_size=self.patch_size, in_chans=self.in_chans,
                         dim=self.vision_width, depth=self.vision_layers, n_heads=self.vision_heads, num_classes=0,
                         mlp=self.vision_mlp, norm_eps=self.vision_norm_eps, pre_norm=self.vision_pre_norm,
                         patch_bias=self.vision_patch_bias)

    def language(self) -> GPTConfig:
        return GPTConfig(vocab_size=self.vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, pos=self.pos, norm=self.norm, mlp=self.mlp,
                         bias=self.bias, tie_weights=self.tie_weights, dropout=self.dropout, context_dim=self.n_embd if self.fusion == "cross" else 0)

    def estimate_params(self) -> int:
        proj = self.vision_width * self.n_embd + (self.n_embd**2 if self.projector == "mlp" else 0)
        proj += self.tiles**2 * self.n_embd if self.tiles > 1 else 0  # the tile embeddings
        return self.vision().estimate_params() + proj + self.language().estimate_params()


@register_family
class VLM(Model):
    """forward(images (B, C, H, W), idx (B, T), key_padding_mask=None (B, T), True on real text tokens)
    -> logits (B, T, V) for the text positions."""

    config_class = VLMConfig

    def __init__(self, config: VLMConfig):
        super().__init__(config)
        c = config
        self.visual = ViT(c.vision())
        if c.projector == "mlp":
            self.projector = nn.Sequential(nn.Linear(c.vision_width, c.n_embd), nn.GELU(),
                                           nn.Linear(c.n_embd, c.n_embd))
        else:
            self.projector = nn.Linear(c.vision_width, c.n_embd)
        self.lm = GPT(c.language())
        if c.tiles > 1:  # which tile a token came from (the tower's own positions are within a tile)
            self.tile_embed = nn.Parameter(torch.randn(c.tiles**2, c.n_embd) * 0.02)

    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, image_tokens, n_embd): the tower's tokens in the language model's width."""
        t = self.config.tiles
        if t == 1:
            return self.projector(self.visual.forward_features(images))
        B, C, H, W = images.shape
        if H != W or H != self.config.img_size:
            raise ValueError(f"images: the tiled model takes {self.config.img_size}x{self.config.img_size} images, "
                             f"got {tuple(images.shape)}")
        s = H // t
        tiles = images.reshape(B, C, t, s, t, s).permute(0, 2, 4, 1, 3, 5).reshape(B * t * t, C, s, s)  # raster order
        tokens = self.visual.forward_features(tiles)  # (B * t * t, N, D)
        if self.config.tile_tokens == "cls":
            tokens = tokens[:, :1]  # (B * t * t, 1, D)
        tokens = self.projector(tokens).reshape(B, t * t, -1, self.config.n_embd)  # (B, t * t, n, E)
        return (tokens + self.tile_embed[None, :, None]).flatten(1, 2)  # (B, t * t * n, E)

    def forward(self, images, idx, key_padding_mask=None):
        image = self.image_embeddings(images)
        if self.config.fusion == "cross":
            return self.lm(idx, key_padding_mask=key_padding_mask, context=image)
        if key_padding_mask is not None:  # the image tokens are always real
            keep = torch.ones(image.shape[:2], dtype=torch.bool, device=idx.device)
            key_padding_mask = torch.cat([keep, key_padding_mask.bool()], dim=1)  # (B, P + T)
        return self.lm(idx, key_padding_mask=key_padding_mask, prefix=image)

    def generate(self, images, prompts, max_new_tokens: int, **kwargs):
        """Text after each (image, prompt) with a KV cache; see `mmfm.models.vlm_generate.generate_with_image`.

        generate(images (B, C, H, W), prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 generator=None, tokenizer=None) -> Generation
        """
        from .vlm_generate import generate_with_image

        return generate_with_image(self, images, prompts, max_new_tokens, **kwargs)

    @classmethod
    def from_parts(cls, vision: ViT, lm: GPT, fusion: str = "prefix", projector: str = "mlp", tiles: int = 1,
                   tile_tokens: str = "all") -> "VLM":
        """A VLM whose tower and language model start from trained mmfm models (their weights are copied; the
        projector, the tile embeddings, and the cross-attention with fusion="cross", start fresh). With `tiles`,
        the VLM takes images of tiles x the tower's size."""
        v, g = vision.config, lm.config
        if v.pool != "cls" or not v.class_token or v.fc_norm or v.ls_init is not None:
            raise ValueError("the VLM's tower is a class-token ViT without fc_norm or layer scale")
        cfg = VLMConfig(fusion=fusion, projector=projector, img_size=v.img_size * tiles, tiles=tiles,
                        tile_tokens=tile_tokens, patch_size=v.patch_size,
                        in_chans=v.in_chans, vision_width=v.dim, vision_layers=v.depth, vision_heads=v.n_heads,
                        vision_mlp=v.mlp, vision_norm_eps=v.norm_eps, vision_pre_norm=v.pre_norm,
                        vision_patch_bias=v.patch_bias, vocab_size=g.vocab_size, block_size=g.block_size,
                        n_layer=g.n_layer, n_head=g.n_head, n_embd=g.n_embd, pos=g.pos, norm=g.norm, mlp=g.mlp,
                        bias=g.bias, tie_weights=g.tie_weights, dropout=g.dropout)
        model = cls(cfg)
        model.load_tower(vision)
        missing, unexpected = model.lm.load_state_dict(lm.state_dict(), strict=False)
        if unexpected or any(".cross." not in k and ".norm_x." not in k for k in missing):
            raise ValueError(f"the GPT's weights do not fit the VLM's language model (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
        model.tokenizer = lm.tokenizer
        return model

    def load_tower(self, vit: ViT) -> None:
        """Copies a trained ViT's weights, its classification head dropped, into the image tower (shapes must fit)."""
        self.visual.load_state_dict({k: t for k, t in vit.state_dict().items() if not k.startswith("head.")})

    def example_inputs(self, batch_size: int = 2) -> dict:
        c = self.config
        return {"images": torch.randn(batch_size, c.in_chans, c.img_size, c.img_size),
                "idx": torch.randint(0, c.vocab_size, (batch_size, 8))}


_BASE = VLMConfig()
register_preset("vlm-test", _BASE.replace(img_size=16, patch_size=8, vision_width=32, vision_layers=2, vision_heads=2,
                                          block_size=32, n_layer=2, n_head=2, n_embd=32))
# the CPU default: 56x56 grayscale canvases (65 image tokens) into a small char-level GPT
register_preset("vlm-mini", _BASE)
# the same tower and GPT, the tower on each 28-pixel cell of the canvas, one (class) token per cell
register_preset("vlm-tiles", _BASE.replace(tiles=2, tile_tokens="cls"))
register_preset("vlm-tiles-cross", _BASE.replace(tiles=2, tile_tokens="cls", fusion="cross"))  # the VQA default
