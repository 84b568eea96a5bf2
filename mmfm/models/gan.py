"""A small class-conditional GAN: a DCGAN generator with class-conditional BatchNorm (the registered model, saved
as a folder) and a spectral-norm discriminator with projection conditioning (Miyato & Koyama 2018), trained
with the hinge loss (mmfm.train.gan).

    g = build_model("gan-mini")                       # 28x28x1, 20 classes
    x = g(torch.randn(8, g.config.z_dim), y)          # (8, 1, 28, 28) in [-1, 1]
    d = Discriminator(g.config)                       # d(x, y) -> (8,) real/fake logits
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import spectral_norm

from ..config import ModelConfig, check, opt
from ..registry import register_family, register_preset
from .base import Model


@dataclass
class GANConfig(ModelConfig):
    family = "gan"
    image_size: int = opt(28, lo=4)  # divisible by 4: the generator doubles a (image_size / 4) grid twice
    channels: int = opt(1, lo=1)
    num_classes: int = opt(20, lo=1)
    z_dim: int = opt(64, lo=1)  # noise width; the class embedding has the same width and is concatenated
    g_width: int = opt(64, lo=2)  # generator channels: 2w at image_size / 4, w at / 2, w / 2 at full size
    d_width: int = opt(32, lo=1)  # discriminator channels: w, 2w, 2w, 4w, 4w

    def validate(self):
        super().validate()
        check(self.image_size % 4 == 0, f"GANConfig.image_size={self.image_size}: must be divisible by 4")

    def estimate_params(self) -> int:
        s, z, (c0, c1, c2) = self.image_size // 4, self.z_dim, self.g_channels
        fc = 2 * z * c0 * s * s + c0 * s * s
        # conditional BatchNorm: a gain and a bias per class and channel, running mean and var, batch counter
        bns = sum((2 * self.num_classes + 2) * c + 1 for c in (c0, c1, c2))
        return self.num_classes * z + fc + 16 * (c0 * c1 + c1 * c2) + 9 * c2 * self.channels + self.channels + bns

    @property
    def g_channels(self) -> tuple[int, int, int]:
        return 2 * self.g_width, self.g_width, self.g_width // 2


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm without its own affine, then a per-class gain and bias (SNGAN, BigGAN): the label sets the
    scale and shift of every channel at every resolution, so the generator cannot ignore it."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)

    def init_weights(self):
        nn.init.ones_(self.gain.weight)  # starts as plain BatchNorm
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]  # (B, C, H, W)


@register_family
class Generator(Model):
    """forward(z (B, z_dim), y (B,)) -> (B, channels, image_size, image_size) in [-1, 1]: [z, embed(y)] -> linear
    -> (2w, s, s) -> two 4x4 stride-2 transposed convs -> 3x3 conv -> tanh (DCGAN), with class-conditional
    BatchNorm (`ConditionalBatchNorm2d`) + ReLU before each conv (SNGAN / BigGAN conditioning)."""

    config_class = GANConfig

    def __init__(self, config: GANConfig):
        super().__init__(config)
        c = config
        c0, c1, c2 = c.g_channels
        self.embed = nn.Embedding(c.num_classes, c.z_dim)
        self.fc = nn.Linear(2 * c.z_dim, c0 * (c.image_size // 4) ** 2)
        self.norms = nn.ModuleList(ConditionalBatchNorm2d(ch, c.num_classes) for ch in (c0, c1, c2))
        self.convs = nn.ModuleList([nn.ConvTranspose2d(c0, c1, 4, 2, 1, bias=False),
                                    nn.ConvTranspose2d(c1, c2, 4, 2, 1, bias=False),
                                    nn.Conv2d(c2, c.channels, 3, 1, 1)])
        self.init_weights()

    def init_weights(self):
        for m in self.modules():  # DCGAN: N(0, 0.02) weights; conditional BatchNorm gains 1, biases 0
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None and isinstance(m.bias, torch.Tensor):
                nn.init.zeros_(m.bias)
        for norm in self.norms:
            norm.init_weights()

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s = self.config.image_size // 4
        h = self.fc(torch.cat([z, self.embed(y)], dim=1))  # (B, c0 * s * s)
        h = h.view(len(z), -1, s, s)  # (B, c0, s, s)
        for norm, conv in zip(self.norms, self.convs):
            h = conv(torch.relu(norm(h, y)))  # (B, c0, s, s) -> (B, c1, 2s, 2s) -> (B, c2, 4s, 4s) -> (B, C, H, W)
        return torch.tanh(h)

    def example_inputs(self, batch_size: int = 2) -> dict:
        return {"z": torch.randn(batch_size, self.config.z_dim),
                "y": torch.arange(batch_size) % self.config.num_classes}


def projection_embedding(num_classes: int, dim: int) -> nn.Embedding:
    """The projection discriminator's class embedding at nn.Linear's default scale, U(+-1 / sqrt(dim)) (the
    linear head's), not nn.Embedding's N(0, 1): initialised before spectral norm wraps it, so the norm's power
    iteration starts on these weights (see Discriminator)."""
    embed = nn.Embedding(num_classes, dim)
    nn.init.uniform_(embed.weight, -dim ** -0.5, dim ** -0.5)
    return embed


class Discriminator(nn.Module):
    """Spectral-norm CNN (3x3, 4x4 stride 2, 3x3, 4x4 stride 2, 3x3; LeakyReLU 0.1, SNGAN's standard CNN) ->
    spatial mean h (B, 4w) -> logit = linear(h) + <embed(y), h> (the projection discriminator), plus
    `classify(h)`, an auxiliary classifier head over the same features (AC-GAN; used by GANTask's aux term).
    The mean, not the sum of SNGAN's ResNet head: summed over 7 x 7 positions, the logits had 49x the gain for
    the same spectral norms, D pushed every sample past the hinge margin within 9 steps (loss exactly 0, no
    gradient) and froze there while G collapsed (docs/generative.md, "Measured in round five").

    Spectral norm makes a weight's scale irrelevant to its output but not to its training: Adam moves each raw
    entry by about lr per step, so the normalised weight turns by lr / rms(raw). nn.Embedding's N(0, 1) init
    left the projection embedding turning ~20x slower than the linear head beside it (frozen near its random
    init: 0.4 % moved after 50 steps, D's projection at chance on real digits), so `projection_embedding`
    starts it at the linear head's scale (round eight, docs/generative.md)."""

    def __init__(self, config: GANConfig):
        super().__init__()
        w, c = config.d_width, config.channels
        chans = [(c, w, 3, 1), (w, 2 * w, 4, 2), (2 * w, 2 * w, 3, 1), (2 * w, 4 * w, 4, 2), (4 * w, 4 * w, 3, 1)]
        layers: list[nn.Module] = []
        for cin, cout, k, stride in chans:
            layers += [spectral_norm(nn.Conv2d(cin, cout, k, stride, 1)), nn.LeakyReLU(0.1, inplace=True)]
        self.net = nn.Sequential(*layers)
        self.linear = spectral_norm(nn.Linear(4 * w, 1))
        self.embed = spectral_norm(projection_embedding(config.num_classes, 4 * w))
        self.classifier = nn.Linear(4 * w, config.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(dim=(2, 3))  # (B, 4w, H/4, W/4) -> (B, 4w): the mean (see above)

    def head(self, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.linear(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)  # (B,)

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(h)  # (B, num_classes) class logits from features(x)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x), y)  # (B,)


_BASE = GANConfig()
register_preset("gan-test", _BASE.replace(image_size=16, num_classes=4, z_dim=8, g_width=8, d_width=4))
register_preset("gan-mini", _BASE)  # 28x28x1, 20 classes (digits + animals): ~0.9 M generator parameters
