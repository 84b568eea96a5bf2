"""Caption conditioning on a user's image-text pairs: each image is conditioned on ITS OWN caption(s) through a
frozen mmfm CLIP text tower, and generated images are scored by CLIP retrieval against the held-out captions.

    train, test, sizes = load_captioned("data/emoji_clipart/pairs.csv", size=32, channels=3)
    cond = CaptionConditioner(clip, train.captions, test.first_captions)
    cond.batch_condition((images, index))   # a random caption of each training image `index` -> {"text": (B, E)}
    cond.condition(index)                   # the held-out image `index`'s caption (the sampling prompt)
    caption_quality(model, sampler, cond, test, 4.0)   # CLIP top-1 / top-5, their real-image ceiling, CLIP FID

The pairs are read by mmfm.data.pairs (an open_clip CSV/TSV, filepath,title, or an image + .txt folder) and split
as recipes/clip_pretrain.py splits them (mmfm.data.caption_pairs: by image content, seed, test_fraction 0.2), so
a CLIP trained on the same file with the same seed never saw the held-out images or their captions.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError
from .text import TextConditioner

log = logging.getLogger(__name__)


@dataclass
class CaptionedImages:
    images: torch.Tensor  # (N, C, S, S) in [-1, 1]
    captions: list[list[str]]  # every caption of each image

    def __len__(self) -> int:
        return len(self.images)

    @property
    def first_captions(self) -> list[str]:
        return [c[0] for c in self.captions]


def _as_images(samples: list[dict]) -> CaptionedImages:
    x = torch.from_numpy(np.stack([s["image"] for s in samples])).float() / 127.5 - 1  # (N, C, S, S)
    return CaptionedImages(x, [list(s["captions"]) for s in samples])


def load_captioned(path, size: int, channels: int | None = None, seed: int = 0, test_fraction: float = 0.2,
                   limit: int | None = None) -> tuple[CaptionedImages, CaptionedImages, dict]:
    """(train, held-out test, sizes for metrics.json) of image-text pairs at size x size and `channels` (default:
    3 when any image is in colour, else 1); `limit` keeps a seeded subset of each split (tests, smoke runs)."""
    from ..data.caption_pairs import caption_pair_sets, image_channels
    from ..data.captions import subsample
    from ..data.pairs import PairSet, detect_pairs

    pairs = detect_pairs(path, what="--data")
    if not isinstance(pairs, PairSet):
        raise ConfigError(f"--data {path}: webdataset shards are a stream; caption-conditioned DiT training reads "
                          "an open_clip CSV/TSV (filepath,title) or a folder of images with same-named .txt captions")
    channels = channels or image_channels(pairs.paths)
    sets = caption_pair_sets(pairs, size, channels, n_test=0, seed=seed, test_fraction=test_fraction)
    train, test = (subsample(sets[s].samples, limit or 0, seed) for s in ("train", "test"))
    sizes = {"split/train_images": len(train), "split/test_images": len(test)}
    return _as_images(train), _as_images(test), sizes


class CaptionConditioner(TextConditioner):
    """Text features of every training caption (a random one of its image's captions per read) and of one
    caption per held-out image (the sampling prompts); retrieval of images among the unique held-out captions."""

    def __init__(self, clip, train_captions: list[list[str]], prompts: list[str], tokens: bool = False,
                 batch_size: int = 512):
        super().__init__(clip, tokens)
        if any(not caps for caps in train_captions):
            raise ValueError("every training image needs at least one caption")
        counts = torch.tensor([len(c) for c in train_captions])  # (N,)
        self.counts, self.offsets = counts, torch.cumsum(counts, 0) - counts  # (N,) each
        self.prompts = list(prompts)
        self.train_feats = self.encode_all([c for caps in train_captions for c in caps], batch_size)
        self.prompt_feats = self.encode_all(self.prompts, batch_size)
        position = {p: i for i, p in enumerate(dict.fromkeys(self.prompts))}  # unique caption -> its row
        unique = list(position)
        self.unique_index = torch.tensor([position[p] for p in self.prompts])  # (M,): prompt -> unique caption
        self.unique_text = self.encode_all(unique, batch_size)["text"]  # (U, E)

    @classmethod
    def from_folder(cls, path: str, train_captions: list[list[str]], prompts: list[str],
                    tokens: bool = False) -> "CaptionConditioner":
        return cls(cls.load_clip(path), train_captions, prompts, tokens)

    def encode_all(self, texts: list[str], batch_size: int) -> dict:
        parts = [self.encode(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def batch_condition(self, batch) -> dict:
        """(images, image index (B,)) -> the features of a random caption of each image."""
        index = batch[1]
        counts, offsets = self.counts.to(index.device)[index], self.offsets.to(index.device)[index]  # (B,) each
        pick = offsets + (torch.rand(index.shape, device=index.device) * counts).long().clamp_max(counts - 1)
        return self._pick(self.train_feats, pick)

    @torch.no_grad()
    def retrieval(self, images: torch.Tensor, index: torch.Tensor, ks=(1, 5)) -> dict:
        """{top<k>: fraction of images whose own prompt (prompts[index]) is among the k unique held-out captions
        most similar to them (CLIP cosine)}; images in [-1, 1]."""
        img = F.normalize(self.image_embeddings(images), dim=-1)  # (N, E)
        sims = img @ F.normalize(self.unique_text.to(img.device), dim=-1).T  # (N, U)
        own = self.unique_index.to(img.device)[index.to(img.device)]  # (N,)
        rank = (sims > sims.gather(1, own[:, None])).sum(1)  # (N,) captions scoring above the own one
        return {f"top{k}": (rank < k).float().mean().item() for k in ks}


class ClipImageFeatures(nn.Module):
    """A CLIP image tower's embeddings as an FID feature extractor: (B, C, H, W) in [-1, 1] -> (B, embed_dim)."""

    def __init__(self, conditioner: TextConditioner):
        super().__init__()
        self.clip = conditioner.clip  # registered, so torchmetrics finds its device
        self.conditioner, self.num_features = conditioner, conditioner.text_dim

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conditioner.image_embeddings(images).double()  # (B, E)


def caption_quality(model, sampler, conditioner: CaptionConditioner, test: CaptionedImages, guidance_scale: float,
                    steps: int = 20, seed: int = 0, decode=None, judge: CaptionConditioner | None = None) -> dict:
    """One guided sample per held-out image, from its caption; CLIP retrieval of each sample's caption among the
    unique held-out captions (top-1 / top-5) beside the real images' same score, and FID in the CLIP image
    tower's space: samples of a seeded half of the captions against the other half's real images, beside the
    real-vs-real distance of the same halves (the floor). `judge` (a conditioner on another CLIP, with the same
    prompts) scores instead of the conditioning CLIP, whose own retrieval guided samples can game."""
    from ..eval.gen_quality import generate

    index = torch.arange(len(test))
    fake = generate(model, sampler, index, guidance_scale, steps, seed=seed, cond_fn=conditioner.condition)
    fake = fake if decode is None else decode(fake)
    return score_captioned(fake, test, judge or conditioner, seed, f"guidance {guidance_scale:.2f}")


def score_captioned(fake: torch.Tensor, test: CaptionedImages, conditioner: CaptionConditioner, seed: int = 0,
                    tag: str = "") -> dict:
    """The metrics of caption_quality for samples `fake` (N, C, H, W), one per held-out image, in order."""
    from ..eval.gen_quality import frechet_distance

    index = torch.arange(len(test))
    out = {f"clip_{k}/captions": v for k, v in conditioner.retrieval(fake, index).items()}
    out.update({f"clip_{k}_real/captions": v for k, v in conditioner.retrieval(test.images, index).items()})
    half = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
    a, b = half[: len(test) // 2], half[len(test) // 2: 2 * (len(test) // 2)]
    features = ClipImageFeatures(conditioner)
    if len(a) >= 2:
        out["fid_clip/captions"] = frechet_distance(features, test.images[b], fake[a])
        out["fid_clip_floor/captions"] = frechet_distance(features, test.images[b], test.images[a])
    out.update({"eval/captions": len(test), "eval/unique_captions": len(conditioner.unique_text)})
    log.info("%s captions: CLIP top-1 %.3f top-5 %.3f (real %.3f / %.3f), CLIP FID %s (floor %s)",
             tag, out["clip_top1/captions"], out["clip_top5/captions"], out["clip_top1_real/captions"],
             out["clip_top5_real/captions"], out.get("fid_clip/captions"), out.get("fid_clip_floor/captions"))
    return out


def caption_training_data(path, model_cfg: dict, model_over: dict, vae: str = "", seed: int = 0,
                          limit: int | None = None, latent_scale: str = "max"):
    """recipes/dit_train.py --data PAIRS text_encoder=CLIP: (train, test, sizes, codec or None, what the DiT learns
    (pixels or latents), model overrides). Pixels: images at the model's input_size, in_channels from the
    overrides or else the images (3 when any is in colour). vae=: images at the VAE's sample size and channels,
    encoded once and scaled by `latent_scale` (mmfm.diffusion.latent; the DiT's input shape is then the latent
    shape)."""
    import json
    from pathlib import Path

    from .latent import latent_training_data

    if vae:
        cfg_file = Path(vae) / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"vae={vae}: no saved VAE there (config.json missing); train one with "
                                    f"`python recipes/vae_train.py --data {path} --out DIR` and pass vae=DIR/model")
        vae_cfg = json.loads(cfg_file.read_text())
        size, channels = vae_cfg["sample_size"], vae_cfg["in_channels"]
    else:
        size, channels = int(model_over.get("input_size", model_cfg["input_size"])), model_over.get("in_channels")
    train, test, sizes = load_captioned(path, size, channels, seed=seed, limit=limit)
    if vae:
        codec, images, model_over = latent_training_data(vae, train.images, model_over, latent_scale)
        return train, test, sizes, codec, images, model_over
    model_over = {**model_over, "input_size": size, "in_channels": train.images.shape[1]}
    return train, test, sizes, None, train.images, model_over
