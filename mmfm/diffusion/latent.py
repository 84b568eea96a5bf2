"""Diffusion on the latents of a VAE (diffusers AutoencoderKL, as mmfm.models.vae builds and recipes/vae_train.py
trains): images are padded to the VAE's sample size, encoded once to scaled latents, the DiT learns those, and
samples are decoded and cropped back to the data's size before the grid and the judge.

    codec = LatentCodec.from_folder("runs/vae/model", image_size=28, scale_by="std")
    z = codec.encode(images)          # (N, 1, 28, 28) in [-1, 1] -> (N, 4, 8, 8) at unit std
    x = codec.decode(z)               # (N, 4, 8, 8) -> (N, 1, 28, 28) in [-1, 1]

The scale decides whether the DiT's samplers clip: latents scaled into [-1, 1] (by max) are clipped there like
pixels, latents at unit std are not (`codec.clip_sample`, which recipes/dit_train.py writes into the scheduler
config it saves, mmfm.diffusion.schedule.set_clip_sample).
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


def pad_to(images: torch.Tensor, size: int, value: float = -1.0) -> torch.Tensor:
    """Pad (B, C, H, W) images evenly on every side to size x size with `value` (-1 = background)."""
    h, w = images.shape[-2:]
    if h > size or w > size:
        raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}: size must be at least the image size")
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(images, (left, size - w - left, top, size - h - top), value=value)  # (B, C, size, size)


def crop_to(images: torch.Tensor, h: int, w: int | None = None) -> torch.Tensor:
    """The centre h x w window of (B, C, H, W) images: the inverse of pad_to."""
    w = h if w is None else w
    top, left = (images.shape[-2] - h) // 2, (images.shape[-1] - w) // 2
    return images[..., top:top + h, left:left + w]  # (B, C, h, w)


LATENT_SCALES = ("std", "max")  # how the scale is fixed on the first encode: 1 / std(z) or 1 / max |z|


class LatentCodec:
    """Images <-> scaled VAE latents. encode uses the posterior mean (deterministic, as for cached latents) times
    `scale`. When not given, the scale is fixed on the first encode (the training latents) by `scale_by`:

    - "std": 1 / std(z), unit std, as latent diffusion scales latents (Stable Diffusion's `scaling_factor`, DiT).
      About a third of the values then lie past +-1, so they are sampled unclipped: `clip_sample` is False (no x0
      clip in DDIM/DDPM steps, no final clamp in mmfm.diffusion.sample; the VAE decode still clamps pixels);
    - "max": 1 / max |z|, so that the latents lie in [-1, 1] like pixels and are sampled with pixels' clipping
      (`clip_sample` True). On the RGB emoji VAE of round ten this left the latents a std of 0.14.

    A scale given (a saved model's) is used as is; its folder's scheduler config says whether to clip."""

    def __init__(self, vae, image_size: int, scale: float | None = None, batch_size: int = 250, scale_by: str = "max"):
        if scale_by not in LATENT_SCALES:
            raise ValueError(f"latent scale_by={scale_by!r}: choose from {LATENT_SCALES}")
        self.vae = vae.eval().requires_grad_(False)
        self.image_size, self.pad_size, self.batch_size = image_size, vae.config.sample_size, batch_size
        self.scale, self.scale_by = scale, scale_by
        if image_size > self.pad_size:
            raise ValueError(f"vae: images are {image_size} px but the VAE was trained at {self.pad_size} px")

    @classmethod
    def from_folder(cls, path: str | Path, image_size: int, scale: float | None = None,
                    scale_by: str = "max") -> "LatentCodec":
        from diffusers import AutoencoderKL

        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(f"vae={path}: no saved VAE there (config.json missing); train one with "
                                    "`python recipes/vae_train.py --out DIR` and pass vae=DIR/model")
        return cls(AutoencoderKL.from_pretrained(path), image_size, scale, scale_by=scale_by)

    @property
    def clip_sample(self) -> bool:
        """Whether samples of these latents are clipped to [-1, 1] (they lie there when scaled by max)."""
        return self.scale_by == "max"

    @property
    def channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def latent_size(self) -> int:
        return self.pad_size // 2 ** (len(self.vae.config.block_out_channels) - 1)

    def to(self, device) -> "LatentCodec":
        self.vae.to(device)
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) in [-1, 1] -> (N, latent_channels, h, w) scaled latents on the CPU; fixes `scale` on first
        use (by `scale_by`)."""
        device = next(self.vae.parameters()).device
        z = torch.cat([self.vae.encode(pad_to(x, self.pad_size).to(device)).latent_dist.mode().cpu()
                       for x in images.split(self.batch_size)])
        if self.scale is None:
            self.scale = float(1.0 / (z.std() if self.scale_by == "std" else z.abs().max()))
            log.info("latent scale 1 / %s = %.4f (from %d images; scaled std %.3f, max |z| %.3f)", self.scale_by,
                     self.scale, len(images), float(z.std()) * self.scale, float(z.abs().max()) * self.scale)
        return z * self.scale

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(N, latent_channels, h, w) scaled latents -> (N, C, image_size, image_size) in [-1, 1], on z's device."""
        if self.scale is None:
            raise RuntimeError("LatentCodec.decode before the latent scale is known: encode the training images first")
        dev = next(self.vae.parameters()).device
        out = [self.vae.decode((x / self.scale).to(dev)).sample.clamp(-1, 1).to(z.device)  # pixels clamped
               for x in z.split(self.batch_size)]
        return crop_to(torch.cat(out), self.image_size)


def latent_training_data(vae_path: str | Path, images: torch.Tensor, model_over: dict,
                         scale_by: str = "max") -> tuple[LatentCodec, torch.Tensor, dict]:
    """(codec, scaled latents of `images`, model overrides with the latent shape) for a DiT trained on the
    latents of the VAE saved at `vae_path`, scaled by `scale_by` (LatentCodec): input_size and in_channels come
    from the VAE (refused if given), patch_size defaults to 1 (an 8x8 latent grid is already small) unless given."""
    for key in ("input_size", "in_channels"):
        if key in model_over:
            raise ValueError(f"{key}={model_over[key]}: with vae= the DiT's {key} is the VAE's latent shape")
    codec = LatentCodec.from_folder(vae_path, image_size=images.shape[-1], scale_by=scale_by)
    if images.shape[1] != codec.vae.config.in_channels:
        raise ValueError(f"vae={vae_path} encodes {codec.vae.config.in_channels}-channel images; "
                         f"the data has {images.shape[1]}")
    latents = codec.encode(images)  # (N, latent_channels, h, w)
    over = {"patch_size": 1, **model_over, "input_size": codec.latent_size, "in_channels": codec.channels}
    log.info("vae=%s: %d px images -> %dx%dx%d latents (scale %.4f), DiT patch_size %d", vae_path, images.shape[-1],
             codec.latent_size, codec.latent_size, codec.channels, codec.scale, over["patch_size"])
    return codec, latents, over
