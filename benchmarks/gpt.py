"""mmfm's GPT against nanoGPT, transformers and litgpt on CPU fp32, model for model, in one process:
training-step tokens/s, and greedy KV-cache generation tokens/s against transformers' `generate`.

    flock -x /tmp/mmfm-cpu.lock python benchmarks/gpt.py --nanogpt runs/peers/nanogpt --json runs/bench_gpt.json

Fairness: every peer holds the same weights (the script checks that all compute the same loss on the same
batch before timing), the same GELU kernel (`--gelu exact`: F.gelu everywhere, nanoGPT's own choice;
`--gelu tanh`: one tanh-GELU kernel everywhere, transformers' "gelu_pytorch_tanh"), SDPA attention, the same
loss (F.cross_entropy over the full logits) and the same optimizer (torch's fused AdamW over all parameters).
Two layouts: GPT-2 (learned positions, tied head: mmfm, nanoGPT, transformers) and RoPE (rotary on the whole
head, untied head: mmfm with pos="rope", litgpt, which has no learned-position layout). Peers alternate over
`--rounds` timed rounds and each keeps its best, so a noisy stretch of a shared CPU cannot decide a ratio.
The fp32 matmul rate is measured in the same run; `mfu` is each peer's 6N + 12LTC FLOPs per token against it.

Generation: batch 1 and a ragged batch of 8 (prompt lengths 4..prompt-len), `--new-tokens` greedy tokens per
row, mmfm's `generate` against transformers' `generate` with a dynamic and with a static KV cache (its
documented CPU options without torch.compile); the faster transformers setting is the ratio's denominator.
mmfm's `generate` runs its one-token steps on `decode_threads(model, batch)` intra-op threads (one for small
models); where that is fewer than torch's setting, transformers runs once more with torch set to that count
(`generate_ratio_same_threads`), so that the thread choice is not mistaken for a faster model. Every side must
produce the same tokens. nanoGPT's `generate` has no KV cache and is not timed. `--only generate` (or `train`)
times one part.

Without `--nanogpt DIR` (DIR holds nanoGPT's model.py) nanoGPT is left out with a message; without an
importable litgpt (`pip install --no-deps litgpt`, see install.sh) litgpt is left out with a message.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

import mmfm
from gpt_peers import litgpt_twin, load_nanogpt_module, nanogpt, transformers_gpt2  # benchmarks/
from timing import best_rate, matmul_gflops  # benchmarks/timing.py

from mmfm.models.generation import decode_threads, intra_op_threads

def fused_step(loss_fn, params):
    """One training step (loss, backward, fused AdamW over every parameter) as step(x, y) -> loss."""
    opt = torch.optim.AdamW(list(params), lr=1e-4, fused=True)

    def step(x, y):
        loss = loss_fn(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def lm_loss(forward):
    def loss(x, y):
        logits = forward(x)  # (B, T, V)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))  # (B*T, V)
    return loss


def flops_per_token(model, cfg, block: int) -> float:
    """6N + 12 L T C (nanoGPT's estimate_mfu count), N without the position table."""
    wpe = getattr(model, "wpe", None)
    n = sum(p.numel() for p in model.parameters()) - (wpe.weight.numel() if wpe is not None else 0)
    return 6 * n + 12 * cfg.n_layer * block * cfg.n_embd


def build_contenders(args) -> tuple[dict, dict, dict, tuple]:
    """name -> loss_fn(x, y), name -> model, name -> settings for every available peer; (mmfm GPT, transformers twin)."""
    dims = dict(n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head, vocab_size=args.vocab_size,
                block_size=max(args.block_size, args.prompt_len + args.new_tokens),
                mlp={"exact": "gelu", "tanh": "gelu_tanh"}[args.gelu])
    torch.manual_seed(0)
    ours = mmfm.build_model("gpt2-124m", **dims)
    hf = transformers_gpt2(ours, args.gelu)
    loss = {"mmfm": lm_loss(ours), "transformers": lm_loss(lambda x: hf(x).logits)}
    models = {"mmfm": ours, "transformers": hf}
    gelu_kernel = {"exact": "F.gelu (erf)", "tanh": "F.gelu(approximate='tanh')"}[args.gelu]
    common = f"fp32, SDPA attention, {gelu_kernel}, fused AdamW, F.cross_entropy"
    settings = {"mmfm": f"mmfm GPT (learned positions, tied head), {common}",
                "transformers": f"GPT2LMHeadModel (activation_function={hf.config.activation_function!r}, "
                                f"attn_implementation={hf.config._attn_implementation!r}), {common}"}
    if args.nanogpt:
        nano = nanogpt(load_nanogpt_module(args.nanogpt), hf, args.gelu)
        loss["nanogpt"], models["nanogpt"] = (lambda x, y: nano(x, y)[1]), nano
        settings["nanogpt"] = f"nanoGPT model.py from {args.nanogpt} (its own loss on the full logits), {common}"
    else:
        print("nanogpt: left out (pass --nanogpt DIR, DIR holding nanoGPT's model.py)")
    try:
        import litgpt.model  # noqa: F401
    except ImportError:
        print("litgpt: left out (not importable; install.sh installs it)")
    else:
        torch.manual_seed(0)
        rope = mmfm.build_model("gpt2-124m", **dims, pos="rope", tie_weights=False)
        lit = litgpt_twin(rope)
        loss["mmfm_rope"], models["mmfm_rope"] = lm_loss(rope), rope
        loss["litgpt"], models["litgpt"] = lm_loss(lit), lit
        layout = "RoPE on the whole head, untied head, sequential residual"
        settings["mmfm_rope"] = f"mmfm GPT (pos='rope', tie_weights=False: {layout}), {common}"
        settings["litgpt"] = f"litgpt GPT (rotary_percentage=1.0, GptNeoxMLP, parallel_residual=False: {layout}), {common}"
    return loss, models, settings, (ours, hf)


def time_training(args, losses, models, batch) -> dict:
    with torch.no_grad():  # the same weights must give the same loss
        initial = {k: float(f(*batch)) for k, f in losses.items()}
    steps = {k: fused_step(f, models[k].parameters()) for k, f in losses.items()}
    for step in steps.values():  # warm-up
        step(*batch)
    rates = best_rate({k: (lambda s=s: [s(*batch) for _ in range(args.train_steps)]) for k, s in steps.items()},
                      batch[0].numel() * args.train_steps, args.rounds)
    return rates, initial


def ragged_prompts(args, batch: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = [args.prompt_len] if batch == 1 else torch.randint(4, args.prompt_len + 1, (batch,), generator=g).tolist()
    return [torch.randint(1, args.vocab_size, (n,), generator=g).tolist() for n in lengths]


def hf_generate(hf, rows, n: int, cache: str):
    """transformers generate on left-padded rows -> new tokens per row (no eos: exactly n each)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])  # (B, T0)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    kw = {"cache_implementation": "static"} if cache == "static" else {}
    out = hf.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                      use_cache=True, pad_token_id=0, **kw)
    return out[:, width:].tolist()


def generation_runners(args, ours, hf, rows, batch: int) -> tuple[dict, int]:
    """name -> callable returning the new tokens, and mmfm's decode thread count. transformers runs at torch's
    thread count (its documented settings) and, where mmfm's decode uses fewer (`decode_threads`), once more
    with torch set to that count for its whole call."""
    def hf_at(cache: str, threads: int | None = None):
        def run():
            with intra_op_threads(threads):
                return hf_generate(hf, rows, args.new_tokens, cache)
        return run
    gens = {"mmfm": lambda: ours.generate(rows, args.new_tokens, temperature=0).tolist(),
            "transformers_dynamic_cache": hf_at("dynamic"), "transformers_static_cache": hf_at("static")}
    threads = decode_threads(ours, batch)
    if threads != torch.get_num_threads():
        for cache in ("dynamic", "static"):
            gens[f"transformers_{cache}_cache_{threads}_thread"] = hf_at(cache, threads)
    return gens, threads


def time_generation(args, ours, hf) -> dict:
    ours.eval(), hf.eval()
    out = {}
    for batch in (1, 8):
        rows = ragged_prompts(args, batch, seed=batch)
        gens, threads = generation_runners(args, ours, hf, rows, batch)
        with torch.no_grad():
            ids = {k: g() for k, g in gens.items()}  # warm-up, and the tokens compared below
            rates = best_rate(gens, batch * args.new_tokens, args.rounds)
        documented = max(rates["transformers_dynamic_cache"], rates["transformers_static_cache"])
        same = max(v for k, v in rates.items() if k.startswith("transformers") and
                   (threads == torch.get_num_threads() or k.endswith("_thread")))
        out[f"batch{batch}"] = {"tokens_per_s": {k: round(v) for k, v in rates.items()},
                                "ratio": round(rates["mmfm"] / documented, 2),
                                "ratio_same_threads": round(rates["mmfm"] / same, 2),
                                "mmfm_decode_threads": threads,
                                "same_greedy_tokens": all(v == ids["mmfm"] for v in ids.values()),
                                "new_tokens_each": sorted({len(r) for v in ids.values() for r in v})}
    return out


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--vocab-size", type=int, default=78)
    p.add_argument("--gelu", default="exact", choices=("exact", "tanh"), help="the GELU kernel every peer runs")
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5, help="alternating timed rounds; the best of each is kept")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--nanogpt", default=None, metavar="DIR", help="folder holding nanoGPT's model.py")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result here")
    p.add_argument("--rope-only", action="store_true",
                   help="time only the RoPE pair (mmfm pos='rope' vs litgpt): no GPT-2 layout, no generation")
    p.add_argument("--only", default=None, choices=("train", "generate"),
                   help="time only the training step or only generation (default: both)")
    args = p.parse_args(argv)
    for flag in ("n_layer", "n_embd", "n_head", "block_size", "batch_size", "vocab_size", "train_steps",
                 "new_tokens", "rounds"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.prompt_len < 4:
        p.error(f"--prompt-len must be >= 4 (the ragged batch draws lengths 4..prompt-len), got {args.prompt_len}")
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    losses, models, settings, (ours, hf) = build_contenders(args)
    if args.rope_only and args.only == "generate":
        raise SystemExit("--rope-only times no generation: drop --only generate")
    if args.rope_only:
        if "litgpt" not in models:
            raise SystemExit("--rope-only needs litgpt (pip install --no-deps litgpt==0.5.13, see install.sh)")
        losses, models = ({k: d[k] for k in ("mmfm_rope", "litgpt")} for d in (losses, models))
    x = torch.randint(0, args.vocab_size, (args.batch_size, args.block_size + 1), generator=torch.Generator().manual_seed(0))
    batch = (x[:, :-1].contiguous(), x[:, 1:].contiguous())  # (B, T) each
    for m in models.values():
        m.train()
    train, initial, peak = {}, {}, None
    if args.only != "generate":
        peak = matmul_gflops()
        train, initial = time_training(args, losses, models, batch)
    fpt = {k: flops_per_token(m, ours.config, args.block_size) for k, m in models.items()}
    gen = {} if args.rope_only or args.only == "train" else time_generation(args, ours, hf)
    fastest_peer = max((k for k in train if k not in ("mmfm", "mmfm_rope")), key=train.get, default=None)
    result = {
        "config": {k: getattr(args, k) for k in ("n_layer", "n_embd", "n_head", "block_size", "batch_size",
                                                   "vocab_size", "gelu", "new_tokens", "prompt_len")},
        "threads": torch.get_num_threads(), "rounds": args.rounds, "torch": torch.__version__,
        "settings": settings,
        "params": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
        "initial_loss": {k: round(v, 5) for k, v in initial.items()},
        "matmul_fp32_gflops": round(peak, 1) if train else None,
        "train_tokens_per_s": {k: round(v) for k, v in train.items()},
        "train_ratio": {k: round(train["mmfm_rope" if k == "litgpt" else "mmfm"] / v, 3)
                        for k, v in train.items() if k not in ("mmfm", "mmfm_rope")},
        "mfu": {k: round(v * fpt[k] / 1e9 / peak, 3) for k, v in train.items()},
        "fastest_peer": fastest_peer,
        "generate_tokens_per_s": {b: g["tokens_per_s"] for b, g in gen.items()},
        "generate_ratio": {b: g["ratio"] for b, g in gen.items()},
        "generate_ratio_same_threads": {b: g["ratio_same_threads"] for b, g in gen.items()},
        "generate_mmfm_decode_threads": {b: g["mmfm_decode_threads"] for b, g in gen.items()},
        "generate_same_tokens": {b: g["same_greedy_tokens"] for b, g in gen.items()},
        "generate_new_tokens_each": {b: g["new_tokens_each"] for b, g in gen.items()},
    }
    print(json.dumps(result, indent=2))
    report(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


def report(r: dict) -> None:
    tps, mfu = r["train_tokens_per_s"], r["mfu"]
    if tps:
        print(f"fp32 matmul: {r['matmul_fp32_gflops']} GFLOP/s; training tokens/s (share of that rate by 6N+12LTC):")
    for k, v in tps.items():
        ref = "mmfm_rope" if k in ("litgpt", "mmfm_rope") else "mmfm"
        print(f"  {k:14s} {v:8d}  mfu {mfu[k]:.2f}  mmfm/{k}: {tps[ref] / v:.2f}x  [{r['settings'][k]}]")
    for b, ratio in r["generate_ratio"].items():
        g, threads = r["generate_tokens_per_s"][b], r["generate_mmfm_decode_threads"][b]
        print(f"generation {b}: mmfm {g['mmfm']} (decode on {threads} thread(s)) vs transformers "
              f"{g['transformers_dynamic_cache']} (dynamic cache) / {g['transformers_static_cache']} (static cache) "
              f"tokens/s at {r['threads']} threads -> {ratio}x the faster; same tokens: {r['generate_same_tokens'][b]}")
        same = {k: v for k, v in g.items() if k.endswith("_thread")}
        if same:
            print(f"  transformers with torch at {threads} thread(s) as well: {same} -> "
                  f"{r['generate_ratio_same_threads'][b]}x the faster")

if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f} s)")
