"""Load a saved GPT folder and print completions of one or more prompts.

    python recipes/generate.py runs/gpt_shakespeare/model --prompt "ROMEO:" --max-new-tokens 300
    python recipes/generate.py runs/gpt_shakespeare/model --prompt "KING:" --prompt "JULIET:" --temperature 0
"""
from __future__ import annotations

import argparse
import logging

import torch

import mmfm
from mmfm.models.generation import check_sampling
from mmfm.train import resolve_accelerator


def main(argv=None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="a saved model folder (config.json + model.safetensors + tokenizer/)")
    p.add_argument("--prompt", action="append", help="a prompt (repeat for a batch); default: a newline")
    p.add_argument("--max-new-tokens", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--stop", action="append", default=None, help="a stop string (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where the model generates (auto: CUDA when visible); the seed drives that device's generator")
    args = p.parse_args(argv)
    try:  # before loading anything: --temperature -1 or --top-p 0 is a usage error, not a run
        check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
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
    out = model.generate(prompts, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, stop_strings=stops, generator=gen)
    texts = [prompt + completion for prompt, completion in zip(prompts, out.texts())]
    for i, text in enumerate(texts):
        print(text if len(texts) == 1 else f"--- sample {i}\n{text}", flush=True)
    return texts


if __name__ == "__main__":
    main()
