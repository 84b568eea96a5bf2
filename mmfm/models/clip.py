"""CLIP: a ViT image tower and a causal text tower on the shared stack, projected to one space; with
`decoder_layers` > 0, CoCa (Yu et al. 2022): a multimodal caption decoder on top of the two towers."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig, check, opt
from ..nn import StackConfig, Transformer
from ..registry import register_family, register_preset
from .base import Model, stack_params
from .vit import ViT, ViTConfig, image_tensor


@dataclass
class CLIPConfig(ModelConfig):
    family = "clip"
    embed_dim: int = opt(512, lo=1)
    img_size: int = opt(224, lo=1)
    patch_size: int = opt(32, lo=1)
    in_chans: int = opt(3, lo=1)
    vision_width: int = opt(768, lo=1)
    vision_layers: int = opt(12, lo=1)
    vision_heads: int = opt(12, lo=1)
    vocab_size: int = opt(49408, lo=2)
    context_length: int = opt(77, lo=2)
    text_width: int = opt(512, lo=1)
    text_layers: int = opt(12, lo=1)
    text_heads: int = opt(8, lo=1)
    mlp_ratio: float = opt(4.0, lo=0.01)
    mlp: str = opt("gelu", choices=("gelu", "quick_gelu"))  # quick_gelu: OpenAI's original CLIP weights
    eot_token_id: int = opt(-1, lo=-1)  # -1: vocab_size - 1 (CLIP BPE's end-of-text)
    init_logit_scale: float = opt(math.log(1 / 0.07), lo=-10.0, hi=10.0)  # exp() finite even in fp16 (e^11.1)
    init_logit_bias: float | None = None  # a number: a learnable logit bias (SigLIP: -10, with logit scale log 10)
    tokenizer: str = opt("clip", choices=("clip", "char", "bpe"))
    decoder_layers: int = opt(0, lo=0)  # CoCa: blocks of the multimodal caption decoder (0: a plain CLIP)
    # preprocessing the image tower expects: pixels in [0, 1] -> (x - mean) / std per channel (OpenAI CLIP's)
    image_mean: tuple[float, ...] = (0.48145466, 0.4578275, 0.40821073)
    image_std: tuple[float, ...] = (0.26862954, 0.26130258, 0.27577711)

    def validate(self):
        super().validate()
        check(self.text_width % self.text_heads == 0,
              f"text_width={self.text_width} must be divisible by text_heads={self.text_heads}")
        check(self.vision_width % self.vision_heads == 0,
              f"vision_width={self.vision_width} must be divisible by vision_heads={self.vision_heads}")
        check(self.img_size % self.patch_size == 0,
              f"img_size={self.img_size} not divisible by patch_size={self.patch_size}")
        check(self.eot_token_id < self.vocab_size,
              f"eot_token_id={self.eot_token_id} is outside the vocabulary (vocab_size={self.vocab_size})")
        check(len(self.image_mean) in (1, self.in_chans) and len(self.image_std) == len(self.image_mean),
              f"image_mean/image_std need 1 or in_chans={self.in_chans} values each")
        check(all(s > 0 for s in self.image_std), f"image_std={self.image_std} must be > 0 (images are divided by it)")

    def estimate_params(self) -> int:
        text = (self.vocab_size + self.context_length) * self.text_width
        text += stack_params(self.text_width, self.text_layers, self.mlp_ratio)
        proj = (self.vision_width + self.text_width) * self.embed_dim
        decoder = stack_params(self.text_width, self.decoder_layers, self.mlp_ratio, self.mlp,
                               context_dim=self.vision_width) + self.text_width * self.vocab_size
        return self.vision().estimate_params() + text + proj + (decoder if self.decoder_layers else 0)

    @property
    def eot_id(self) -> int:
        return self.vocab_size - 1 if self.eot_token_id < 0 else self.eot_token_id

    def vision(self) -> ViTConfig:
        return ViTConfig(img_size=self.img_size, patch_size=self.patch_size, in_chans=self.in_chans,
                         dim=self.vision_width, depth=self.vision_layers, n_heads=self.vision_heads,
                         mlp_ratio=self.mlp_ratio, mlp=self.mlp, norm_eps=1e-5, pre_norm=True, patch_bias=False)


def check_text(text, vocab_size: int) -> None:
    """`text` is (B, T) integer token ids in [0, vocab_size) with B, T >= 1; otherwise a clear error."""
    if not isinstance(text, torch.Tensor):
        raise TypeError(f"text must be a torch.Tensor of token ids (B, T), got {type(text).__name__}")
    if text.dtype.is_floating_point or text.dtype.is_complex or text.dtype == torch.bool:
        raise TypeError(f"text must hold integer token ids, got dtype {text.dtype}")
    if text.dim() != 2 or 0 in text.shape:
        raise ValueError(f"text must be (B, T) token ids with B, T >= 1, got shape {tuple(text.shape)}"
                         + ("; add the batch dimension with text[None]" if text.dim() == 1 else ""))
    lo, hi = int(text.min()), int(text.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"text holds token id {lo if lo < 0 else hi}, outside the vocabulary [0, {vocab_size})")


class TextTower(nn.Module):
    """Token + learned positions -> causal stack -> features at the end-of-text token (B, width)."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.eot_id = cfg.eot_id
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.pos_embed = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.transformer = Transformer(StackConfig(cfg.text_width, cfg.text_layers, cfg.text_heads, cfg.mlp_ratio,
                                                   cfg.mlp, causal=True))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    def forward_tokens(self, text: torch.Tensor) -> torch.Tensor:
        T = text.shape[1]
        if T > self.pos_embed.shape[0]:
            raise ValueError(f"text has {T} tokens; the context length is {self.pos_embed.shape[0]}")
        return self.transformer(self.token_embedding(text) + self.pos_embed[:T])  # (B, T, W)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        check_text(text, self.token_embedding.num_embeddings)
        return self.pool(text, self.forward_tokens(text))

    def pool(self, text: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Token outputs x (B, T, W) -> (B, W), each row's output at its end-of-text token."""
        is_eot = text == self.eot_id
        # position of the first end-of-text token; the last position when a row has none
        idx = torch.where(is_eot.any(1), is_eot.int().argmax(1), torch.full_like(text[:, 0], text.shape[1] - 1))
        return x[torch.arange(x.shape[0], device=x.device), idx]  # (B, W)


class CaptionDecoder(nn.Module):
    """CoCa's multimodal text decoder: a learned start vector followed by the text tower's (causal) token outputs,
    through causal blocks that cross-attend to the image tower's tokens, then an LM head.

    forward(text_tokens (B, T, W), image_tokens (B, N, vision_width)) -> logits (B, T + 1, vocab): position t
    predicts token t of the caption from the image and tokens < t."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.start = nn.Parameter(torch.empty(1, 1, cfg.text_width))
        self.transformer = Transformer(StackConfig(cfg.text_width, cfg.decoder_layers, cfg.text_heads, cfg.mlp_ratio,
                                                   cfg.mlp, causal=True, context_dim=cfg.vision_width))
        self.head = nn.Linear(cfg.text_width, cfg.vocab_size, bias=False)
        nn.init.normal_(self.start, std=0.02)
        nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, text_tokens: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        B = image_tokens.shape[0]
        x = torch.cat([self.start.expand(B, -1, -1), text_tokens], dim=1)  # (B, T + 1, W)
        return self.head(self.transformer(x, context=image_tokens))  # (B, T + 1, V)


@register_family
class CLIP(Model):
    """forward(images, text) -> (image_features, text_features, logit_scale), features L2-normalised.

    With decoder_layers > 0 (CoCa), forward_coca(images, text) also returns the caption decoder's logits and
    caption(images) writes captions greedily; forward, encode_image and encode_text are those of a CLIP."""

    config_class = CLIPConfig

    def __init__(self, config: CLIPConfig):
        super().__init__(config)
        c = config
        self.visual = ViT(c.vision())
        self.visual_proj = nn.Parameter(torch.randn(c.vision_width, c.embed_dim) * c.vision_width**-0.5)
        self.text = TextTower(c)
        self.text_proj = nn.Parameter(torch.randn(c.text_width, c.embed_dim) * c.text_width**-0.5)
        self.logit_scale = nn.Parameter(torch.tensor(c.init_logit_scale))
        self.logit_bias = None if c.init_logit_bias is None else nn.Parameter(torch.tensor(float(c.init_logit_bias)))
        self.decoder = CaptionDecoder(c) if c.decoder_layers else None

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised floats, or uint8 pixels (scaled to [0, 1] and normalised with the config's
        image_mean/image_std) -> the image tower's tokens (B, 1 + N, vision_width)."""
        images = image_tensor(images, self.visual_proj.dtype, self.config.image_mean, self.config.image_std)
        return self.visual.forward_features(images)

    def _project_image(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        f = self.visual.head(self.visual.pool(tokens)) @ self.visual_proj  # (B, E)
        return F.normalize(f, dim=-1) if normalize else f

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, C, H, W) images as for image_tokens -> (B, E)."""
        return self._project_image(self.image_tokens(images), normalize)

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        f = self.text(text) @ self.text_proj  # (B, E)
        return F.normalize(f, dim=-1) if normalize else f

    def forward(self, images: torch.Tensor, text: torch.Tensor):
        return self.encode_image(images), self.encode_text(text), self.logit_scale.exp()

    def _need_decoder(self):
        if self.decoder is None:
            raise ValueError("this CLIP has no caption decoder: build it with decoder_layers > 0 (CoCa)")

    def forward_coca(self, images: torch.Tensor, text: torch.Tensor):
        """One pass of both towers and the decoder -> (image_features, text_features, logit_scale, logits
        (B, T, vocab)); logits[:, t] predicts text[:, t] from the image and text[:, :t]."""
        self._need_decoder()
        check_text(text, self.config.vocab_size)
        image_tokens = self.image_tokens(images)
        x = self.text.forward_tokens(text)  # (B, T, W), causal: row t saw tokens <= t
        text_features = F.normalize(self.text.pool(text, x) @ self.text_proj, dim=-1)
        logits = self.decoder(x[:, :-1], image_tokens)  # (B, T, V)
        return self._project_image(image_tokens), text_features, self.logit_scale.exp(), logits

    @torch.no_grad()
    def caption(self, images: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
        """Greedy captions (B, L) of token ids, L <= max_len (default: the context length); a row that has
        written its end-of-text token is filled with it. Decode with the model's tokenizer."""
        self._need_decoder()
        max_len = max_len or self.config.context_length
        if not 1 <= max_len <= self.config.context_length:
            raise ValueError(f"max_len={max_len} must be in [1, context_length={self.config.context_length}]")
        image_tokens = self.image_tokens(images)
        B, eot = image_tokens.shape[0], self.config.eot_id
        out = torch.empty(B, 0, dtype=torch.long, device=image_tokens.device)
        done = torch.zeros(B, dtype=torch.bool, device=image_tokens.device)
        for _ in range(max_len):
            x = self.text.forward_tokens(out) if out.shape[1] else image_tokens.new_zeros(B, 0, self.config.text_width)
            nxt = self.decoder(x, image_tokens)[:, -1].argmax(-1).masked_fill(done, eot)  # (B,)
            out = torch.cat([out, nxt[:, None]], dim=1)  # (B, t + 1)
            done |= nxt == eot
            if done.all():
                break
        return out

    def example_inputs(self, batch_size: int = 2) -> dict:
        c = self.config
        text = torch.randint(0, c.vocab_size - 1, (batch_size, c.context_length))
        text[:, max(c.context_length - 3, 0)] = c.eot_id
        return {"images": torch.randn(batch_size, c.in_chans, c.img_size, c.img_size), "text": text}


_BASE = CLIPConfig()
register_preset("clip-test", _BASE.replace(embed_dim=32, img_size=32, patch_size=8, vision_width=32, vision_layers=2,
                                           vision_heads=2, vocab_size=512, context_length=16, text_width=32,
                                           text_layers=2, text_heads=2, tokenizer="char"))
# the default CPU run: 28x28 grayscale, a 4x4 grid of 7x7 patches; text through a byte-level BPE of at most
# 1024 tokens trained on the captions (CLIP's 49408-row embedding would dominate a CPU step), 24 tokens long
register_preset("clip-mini", _BASE.replace(embed_dim=128, img_size=28, patch_size=7, in_chans=1, vision_width=128,
                                           vision_layers=4, vision_heads=4, vocab_size=1024, context_length=24,
                                           text_width=128, text_layers=3, text_heads=4, tokenizer="bpe",
                                           image_mean=(0.5,), image_std=(0.5,)))
register_preset("clip-vit-b-32", _BASE)  # open_clip ViT-B-32
register_preset("clip-vit-b-16", _BASE.replace(patch_size=16))  # open_clip ViT-B-16
