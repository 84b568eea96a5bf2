"""Load a saved GPT (or VLM) folder and print completions of one or more prompts.

    python recipes/generate.py runs/gpt_shakespeare/model --prompt "ROMEO:" --max-new-tokens 300
    python recipes/generate.py runs/gpt_shakespeare/model --prompt "KING:" --prompt "JULIET:" --temperature 0
    python recipes/generate.py runs/vlm_caption/model --image digit.png --prompt "caption: " --temperature 0
    python recipes/generate.py runs/vlm/model --image canvas.png --prompt "is there a cat? " --max-new-tokens 8

A VLM folder needs --image: the image is converted to the model's channels and resized to its img_size, and
each prompt is answered about it (KV cache, the same sampling options); generation stops at <eos>.
"""
from __future__ import annotations

import argparse
import logging

import numpy as np
import torch

import mmfm
from mmfm.models.generation import check_sampling
from mmfm.train import resolve_accelerator


def read_image(p, path: str, config) -> torch.Tensor:
    """An image file -> uint8 (1, C, img_size, img_size) for a VLM (C from config.in_chans)."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(path)
        image = image.convert("L" if config.in_chans == 1 else "RGB").resize((config.img_size, config.img_size))
    except (OSError, UnidentifiedImageError) as e:
        p.error(f"--image {path}: cannot read it as an image ({e})")
    pixels = torch.as_tensor(np.array(image, dtype=np.uint8))
    return (pixels[None] if pixels.dim() == 2 else pixels.permute(2, 0, 1))[None]  # (H, W[, C]) -> (1, C, H, W)


def generate_vlm(p, args, model, prompts, stops, gen, device):
    """The VLM branch of main: one image for every prompt; usage errors name their flag."""
    if stops:
        p.error("--stop: a VLM's generation stops at <eos>; --stop is for text models")
    if not args.prompt:
        p.error("--prompt: a VLM needs a prompt, e.g. --prompt 'caption: ' for a caption model")
    images = read_image(p, args.image, model.config).to(device).expand(len(prompts), -1, -1, -1)
    c = model.config
    room = c.block_size - (c.image_tokens if c.fusion == "prefix" else 0)
    try:
        longest = max(len(model.tokenizer.encode(s)) for s in prompts)
    except ValueError as e:
        p.error(f"--prompt: {e}")
    n = room - longest if args.max_new_tokens is None else args.max_new_tokens
    if n < 0 or longest + n > room:
        p.error(f"--max-new-tokens: the prompt ({longest} tokens) and {n} new tokens exceed the VLM's text "
                f"room of {room} tokens")
    return model.generate(images, prompts, n, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          generator=gen)


def main(argv=None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="a saved model folder (config.json + model.safetensors + tokenizer/)")
    p.add_argument("--prompt", action="append", help="a prompt (repeat for a batch); default: a newline")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: 300 for a text model, the rest of the text room for a VLM")
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--stop", action="append", default=None, help="a stop string (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image", default=None, help="an image file for a VLM folder (PNG, JPEG, ...)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the model generates (auto: CUDA when visible); the seed drives that device's generator")
    args = p.parse_args(argv)
    try:  # before loading anything: --temperature -1 or --top-p 0 is a usage error, not a run
        check_sampling(300 if args.max_new_tokens is None else args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    except (TypeError, ValueError) as e:
        name, rest = str(e).split(" ", 1)  # each message opens with the argument's name
        p.error(f"--{name.replace('_', '-')} {rest}")
    logging.basicConfig(level=logging.WARNING)
    device = torch.device("cuda" if resolve_accelerator(args.device)[0] == "gpu" else "cpu")
    model = mmfm.build_model(args.model).eval().to(device)  # prompts are encoded onto the model's device
    if model.tokenizer is None:
        p.error(f"{args.model} has no tokenizer/ folder: cannot encode text prompts")
    unescape = lambda s: s.replace("\\n", "\n")  # noqa: E731  (allow "\n" on the shell)
    prompts = [unescape(s) for s in (args.prompt or ["\\n"])]
    stops = [unescape(s) for s in args.stop] if args.stop else None
    gen = torch.Generator(device=device).manual_seed(args.seed)
    is_vlm = model.config.family == "vlm"
    if is_vlm != (args.image is not None):
        p.error(f"--image: {args.model} is a VLM, give it an image" if is_vlm
                else f"--image: {args.model} is a {model.config.family} model, it takes text only")
    if is_vlm:
        out = generate_vlm(p, args, model, prompts, stops, gen, device)
    else:
        n = 300 if args.max_new_tokens is None else args.max_new_tokens
        out = model.generate(prompts, n, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, stop_strings=stops, generator=gen)
    texts = [prompt + completion for prompt, completion in zip(prompts, out.texts())]
    for i, text in enumerate(texts):
        print(text if len(texts) == 1 else f"--- sample {i}\n{text}", flush=True)
    return texts


if __name__ == "__main__":
    main()
