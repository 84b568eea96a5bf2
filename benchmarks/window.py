"""Generation past the context window: seconds for N new tokens after a 3-token prompt on `gpt-shakespeare-char`
(block 256, RoPE: rolling KV cache) and the same dims with learned positions (cache refilled with the last 128
tokens when full), against the cacheless sliding window every token re-runs (what `generate` did past the
window before; `use_cache=False` still does). Greedy, batch 1, untrained weights (speed does not depend on them).

    flock -x /tmp/mmfm-cpu.lock python benchmarks/window.py --json runs/bench_window.json
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import mmfm


def seconds(model, n: int, use_cache: bool, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        model.generate([[1, 2, 3]], n, temperature=0, use_cache=use_cache)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="gpt-shakespeare-char")
    p.add_argument("--new-tokens", default="253,254,1000", help="comma-separated N")
    p.add_argument("--rounds", type=int, default=3, help="best of this many runs per number")
    p.add_argument("--json", default=None, metavar="PATH")
    args = p.parse_args(argv)
    rows = []
    for pos in ("rope", "learned"):
        torch.manual_seed(0)
        model = mmfm.build_model(args.preset, pos=pos).eval()
        model.generate([[1, 2, 3]], 8, temperature=0)  # warm-up
        for n in (int(x) for x in args.new_tokens.split(",")):
            cached, cacheless = seconds(model, n, True, args.rounds), seconds(model, n, False, args.rounds)
            rows.append({"pos": pos, "block_size": model.config.block_size, "new_tokens": n,
                         "seconds_cached": round(cached, 3), "seconds_cacheless_window": round(cacheless, 3),
                         "speedup": round(cacheless / cached, 1)})
            print(json.dumps(rows[-1]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
