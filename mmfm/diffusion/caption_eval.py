"""Score a saved caption-conditioned DiT (recipes/dit_train.py --data PAIRS text_encoder=CLIP) again, optionally
with a judge CLIP other than the one it was conditioned on: guided samples steer toward the conditioning CLIP's
text embedding, so that CLIP's own retrieval can rank samples above real images.

    python -m mmfm.diffusion.caption_eval --model runs/r10/dit_pixel/model --data data/emoji_clipart/pairs.csv \\
        --judge runs/r10/clip_judge/model --json runs/r10/dit_pixel/judged.json

The held-out split, guidance, sampler, steps and seed are the run's (model/diffusion.json; --seed must be the
run's split seed); keys as in the recipe's metrics.json, plus judge (the CLIP folder that scored).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import mmfm

from . import load_scheduler_config, make_sampler
from .captions import CaptionConditioner, caption_quality, load_captioned

log = logging.getLogger(__name__)


def rescore(model_dir, data, judge: str | None = None, seed: int = 0, limit: int | None = None) -> dict:
    """caption_quality of the model saved at `model_dir` on the held-out pairs of `data`, judged by `judge`
    (a saved CLIP folder; default: the conditioning CLIP)."""
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / "diffusion.json").read_text())
    if meta.get("conditioning") != "captions":
        raise ValueError(f"{model_dir}: not a caption-conditioned DiT (diffusion.json has no conditioning=captions)")
    model, train = mmfm.build_model(model_dir).eval(), meta["train"]
    codec = None
    if meta.get("latent_scale") is not None:
        from .latent import LatentCodec

        codec = LatentCodec.from_folder(model_dir / "vae", image_size=meta["image_size"], scale=meta["latent_scale"])
        size, channels = meta["image_size"], codec.vae.config.in_channels
    else:
        size, channels = model.config.input_size, model.config.in_channels
    _, test, _ = load_captioned(data, size, channels, seed=seed, limit=limit)
    prompts = [[c] for c in test.first_captions]  # the conditioners need training captions: the prompts suffice
    cond = CaptionConditioner.from_folder(train["text_encoder"], prompts, test.first_captions, train["text_tokens"])
    scorer = CaptionConditioner.from_folder(judge, prompts, test.first_captions) if judge else None
    sampler = make_sampler(train["sampler"], load_scheduler_config(model_dir))
    out = caption_quality(model, sampler, cond, test, train["guidance_scale"], train["sample_steps"],
                          train["eval_seed"], decode=codec.decode if codec else None, judge=scorer)
    return {**out, "judge": judge or train["text_encoder"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a dit_train.py model folder (caption-conditioned)")
    p.add_argument("--data", required=True, help="the pairs it was trained on (open_clip CSV/TSV or caption folder)")
    p.add_argument("--judge", default=None, help="a saved CLIP folder to score with (default: the conditioning one)")
    p.add_argument("--seed", type=int, default=0, help="the run's split seed")
    p.add_argument("--limit", type=int, default=None, help="held-out images (default: all)")
    p.add_argument("--json", default=None, help="write the metrics here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    out = rescore(args.model, args.data, args.judge, args.seed, args.limit)
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
