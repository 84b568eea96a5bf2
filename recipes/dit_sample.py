"""Sample a saved DiT folder (from recipes/dit_train.py) by class name or text prompt into a PNG grid.

    python recipes/dit_sample.py --model runs/dit/model --classes seven,cat,zebra --seeds 8 --out seven_cat_zebra.png
    python recipes/dit_sample.py --model runs/dit_text/model --prompt "a handwritten digit seven" --guidance 3
    python recipes/dit_sample.py --model runs/r10/dit_pixel/model --prompt "a red heart" \\
        --prompt "a smiling cat face" --seeds 4 --guidance 4 --out hearts_cats.png
    python recipes/dit_sample.py --model runs/r10/dit_latent/model --prompts-file prompts.txt --guidance 4
Rows are the classes / prompts, columns the seeds (seed, seed + 1, ...). A caption-conditioned folder
(`dit_train.py --data PAIRS text_encoder=CLIP`, "conditioning": "captions" in its diffusion.json) is sampled from
free text only: each --prompt (or line of --prompts-file) is encoded once by the frozen CLIP it was trained with
(its folder as recorded in diffusion.json, so run from where it was trained); without a prompt it stops naming
--prompt (the folder does not record its held-out captions), and a prompt longer than the CLIP's context stops
too. A class-prompt folder (text_encoder= on the built-in classes) takes --prompt or samples its class prompts.
A latent model (`dit_train.py vae=`) is decoded through the VAE saved in its folder (<model>/vae) and cropped to the
training images' size. `--device auto` samples on CUDA when visible; the initial noise is drawn on the CPU from each
column's seed, so a grid is the same on any device.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

import mmfm
from mmfm.diffusion import SAMPLERS, load_scheduler_config, make_sampler, sample
from mmfm.diffusion.saved import conditioning, latent_decoder, prompt_problem, read_meta, text_conditioner
from mmfm.train import resolve_accelerator, setup_logging
from mmfm.train.diffusion import column_noise, save_grid

log = logging.getLogger("dit_sample")


def conditions(model_dir: Path, meta: dict, kind: str, classes: str | None, prompts: list[str] | None,
               device="cpu") -> tuple[dict, list[str]]:
    """The condition rows and their names for a folder of conditioning `kind` (mmfm.diffusion.saved): free text
    (caption models), prompts or the class prompts (class-prompt models), or class names (class-conditional)."""
    if kind == "captions":
        return caption_conditions(model_dir, meta, classes, prompts, device)
    if kind == "text":
        conditioner = text_conditioner(meta, device)
        names = checked(conditioner, prompts) or [p for p in conditioner.prompts
                                                  if not classes or any(c in p for c in classes.split(","))]
        return conditioner.encode(names), names
    if prompts:
        raise SystemExit(f"{model_dir} is class-conditional; use --classes from: {', '.join(meta['class_names'])}")
    names = classes.split(",") if classes else meta["class_names"]
    unknown = [n for n in names if n not in meta["class_names"]]
    if unknown:
        raise SystemExit(f"unknown classes {unknown}; choose from: {', '.join(meta['class_names'])}")
    return {"y": torch.tensor([meta["class_names"].index(n) for n in names])}, names


def caption_conditions(model_dir: Path, meta: dict, classes: str | None, prompts: list[str] | None,
                       device="cpu") -> tuple[dict, list[str]]:
    """A caption-conditioned folder (dit_train.py --data PAIRS text_encoder=CLIP): one row per free-text prompt,
    encoded by the frozen CLIP it was trained with, on `device`."""
    if classes:
        raise SystemExit(f"{model_dir} is caption-conditioned (no classes); describe the images with --prompt")
    if not prompts:
        raise SystemExit(f"{model_dir} is caption-conditioned: give free text with --prompt \"a red heart\" "
                         "(repeatable) or --prompts-file FILE (one prompt per line)")
    conditioner = text_conditioner(meta, device)
    return conditioner.encode(checked(conditioner, prompts)), list(prompts)


def checked(conditioner, prompts: list[str] | None) -> list[str] | None:
    """The prompts, or a stop naming the first that cannot condition the model (empty, too long)."""
    for p in prompts or []:
        problem = prompt_problem(conditioner, p)
        if problem:
            shown = repr(p) if len(p) <= 60 else repr(p[:60]) + "..."
            raise SystemExit(f"--prompt {shown} {problem[1]}")
    return prompts


def generate(model_dir: Path, classes: str | None = None, prompts: list[str] | None = None, seeds: list[int] = (0,),
             steps: int = 20, sampler: str = "dpm++", guidance: float = 2.0,
             device="cpu") -> tuple[torch.Tensor, list[str]]:
    """(images in [-1, 1], row names): one row per class / prompt, one column per seed, decoded to pixels."""
    model = mmfm.build_model(model_dir).eval().to(device)
    meta = read_meta(model_dir)
    cond, names = conditions(model_dir, meta, conditioning(meta, model.config), classes, prompts, device)
    seeds = list(seeds)
    cfg = model.config
    shape_one = (cfg.in_channels, cfg.input_size, cfg.input_size)
    cond = {k: v.to(device).repeat_interleave(len(seeds), 0) for k, v in cond.items()}  # row-major: each row per seed
    images = sample(model, make_sampler(sampler, load_scheduler_config(model_dir)),
                    (len(names) * len(seeds), *shape_one), cond, guidance, steps,
                    noise=column_noise(shape_one, len(names), seeds))
    decode = latent_decoder(model_dir, meta, device)
    return (decode(images) if decode else images), names


def read_prompts(path: str | None) -> list[str]:
    """The non-blank lines of a prompts file (none without one)."""
    if not path:
        return []
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    if not any(lines):
        raise SystemExit(f"--prompts-file {path}: no prompts in it (one per line)")
    return [line for line in lines if line]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="runs/dit/model", help="a folder saved by recipes/dit_train.py")
    p.add_argument("--classes", default=None, help="comma-separated class names (default: every class)")
    p.add_argument("--prompt", action="append", default=None,
                   help="a text prompt (caption- or text-conditioned folders); repeatable")
    p.add_argument("--prompts-file", default=None, help="a text file of prompts, one per line (after any --prompt)")
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
    prompts = (a.prompt or []) + read_prompts(a.prompts_file)
    images, names = generate(Path(a.model), a.classes, prompts or None, seeds, a.steps, a.sampler, a.guidance, device)
    path = save_grid(images, len(names), a.out, names, [f"s{s}" for s in seeds],
                     f"{a.sampler} {a.steps} steps, guidance {a.guidance}")
    log.info("wrote %s (sampled on %s)", path, device)
    return path


if __name__ == "__main__":
    main()
