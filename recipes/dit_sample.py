"""Sample a saved DiT folder (from recipes/dit_train.py) by class name or text prompt into a PNG grid.

    python recipes/dit_sample.py --model runs/dit/model --classes seven,cat,zebra --seeds 8 --out seven_cat_zebra.png
    python recipes/dit_sample.py --model runs/dit_text/model --prompt "a handwritten digit seven" --guidance 3
Rows are the classes / prompts, columns the seeds (seed, seed + 1, ...). A latent model (`dit_train.py vae=`)
is decoded through the VAE saved in its folder (<model>/vae) and cropped to the training images' size. `--device auto` samples on CUDA
when visible; the initial noise is drawn on the CPU from each column's seed, so a grid is the same on any device.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

import mmfm
from mmfm.diffusion import SAMPLERS, load_scheduler_config, make_sampler, sample
from mmfm.train import resolve_accelerator, setup_logging
from mmfm.train.diffusion import column_noise, save_grid

log = logging.getLogger("dit_sample")


def conditions(model_dir: Path, meta: dict, classes: str | None, prompts: list[str] | None) -> tuple[dict, list[str]]:
    """The condition rows and their names from class names (class-conditional folders) or prompts (text)."""
    if meta.get("text_encoder"):
        from mmfm.diffusion.text import PromptConditioner

        names = prompts or [p for p in PromptConditioner.from_folder(meta["text_encoder"], meta["class_names"]).prompts
                            if not classes or any(c in p for c in classes.split(","))]
        conditioner = PromptConditioner.from_folder(meta["text_encoder"], meta["class_names"], meta["text_tokens"])
        return conditioner.encode(names), names
    if prompts:
        raise SystemExit(f"{model_dir} is class-conditional; use --classes from: {', '.join(meta['class_names'])}")
    names = classes.split(",") if classes else meta["class_names"]
    unknown = [n for n in names if n not in meta["class_names"]]
    if unknown:
        raise SystemExit(f"unknown classes {unknown}; choose from: {', '.join(meta['class_names'])}")
    return {"y": torch.tensor([meta["class_names"].index(n) for n in names])}, names


def latent_decoder(model_dir: Path, meta: dict, device):
    """The decoder of a latent model's samples (its VAE, the saved latent scale, cropped to the images' size),
    or None for a pixel model."""
    if meta.get("latent_scale") is None:
        return None
    from mmfm.diffusion.latent import LatentCodec

    folder = model_dir / "vae"
    if not (folder / "config.json").is_file():  # folders from before vae/ was saved: the VAE it was trained with
        folder = Path(meta["train"]["vae"])
    size = meta.get("image_size") or 28  # older folders: the built-in 28 px data, the only data vae= takes
    codec = LatentCodec.from_folder(folder, image_size=size, scale=meta["latent_scale"]).to(device)
    log.info("latent model: samples decoded by %s and cropped to %d px", folder, size)
    return codec.decode


def generate(model_dir: Path, classes: str | None = None, prompts: list[str] | None = None, seeds: list[int] = (0,),
             steps: int = 20, sampler: str = "dpm++", guidance: float = 2.0, device="cpu") -> tuple[torch.Tensor, list[str]]:
    """(images in [-1, 1], row names): one row per class / prompt, one column per seed, decoded to pixels."""
    model = mmfm.build_model(model_dir).eval().to(device)
    meta = json.loads((model_dir / "diffusion.json").read_text())
    cond, names = conditions(model_dir, meta, classes, prompts)
    seeds = list(seeds)
    cfg = model.config
    shape_one = (cfg.in_channels, cfg.input_size, cfg.input_size)
    cond = {k: v.to(device).repeat_interleave(len(seeds), 0) for k, v in cond.items()}  # row-major: each row per seed
    images = sample(model, make_sampler(sampler, load_scheduler_config(model_dir)), (len(names) * len(seeds), *shape_one),
                    cond, guidance, steps, noise=column_noise(shape_one, len(names), seeds))
    decode = latent_decoder(model_dir, meta, device)
    return (decode(images) if decode else images), names


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="runs/dit/model", help="a folder saved by recipes/dit_train.py")
    p.add_argument("--classes", default=None, help="comma-separated class names (default: every class)")
    p.add_argument("--prompt", action="append", default=None, help="a text prompt (text-conditioned folders); repeatable")
    p.add_argument("--seeds", type=int, default=8, help="columns")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="dpm++", choices=SAMPLERS)
    p.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale (1 = conditional)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the model samples")
    p.add_argument("--out", default="samples.png")
    a = p.parse_args(argv)
    setup_logging()
    device = torch.device("cuda" if resolve_accelerator(a.device)[0] == "gpu" else "cpu")
    seeds = list(range(a.seed, a.seed + a.seeds))
    images, names = generate(Path(a.model), a.classes, a.prompt, seeds, a.steps, a.sampler, a.guidance, device)
    path = save_grid(images, len(names), a.out, names, [f"s{s}" for s in seeds],
                     f"{a.sampler} {a.steps} steps, guidance {a.guidance}")
    log.info("wrote %s (sampled on %s)", path, device)
    return path


if __name__ == "__main__":
    main()
