"""mmfm GPT vs transformers' GPT2LMHeadModel on CPU fp32: training-step and KV-cache generation tokens/s.

    flock -x /tmp/mmfm-cpu.lock python benchmarks/gpt.py          # 4 layers, width 256, block 128, batch 32

Both models have GPT-2's architecture and the same weights (mmfm's is converted with to_hf_gpt2), the
same vocabulary (char-level Shakespeare's by default), the same batches. Training: forward, loss,
backward, AdamW step (fused for mmfm, as its recipe uses; transformers' Trainer default `adamw_torch`
is the unfused torch AdamW). Generation: one prompt, `--new-tokens` new tokens, greedy, KV cache
(HF `generate(use_cache=True)`); both must produce the same tokens. The peers alternate over `--rounds`
timed rounds and each keeps its best, so a noisy stretch of the shared CPU cannot decide a ratio.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

import mmfm
from mmfm.interop import to_hf_gpt2
from timing import best_rate  # benchmarks/timing.py


def make_step(forward, params, fused: bool):
    opt = torch.optim.AdamW(params, lr=1e-4, fused=fused)

    def step(x, y):
        logits = forward(x)  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=256)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--vocab-size", type=int, default=78)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5, help="alternating timed rounds; the best of each is kept")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours = mmfm.build_model("gpt2-124m", n_layer=args.n_layer, n_embd=args.n_embd, n_head=args.n_head,
                            block_size=max(args.block_size, args.prompt_len + args.new_tokens),
                            vocab_size=args.vocab_size, mlp="gelu_tanh")
    hf = to_hf_gpt2(ours)
    x = torch.randint(0, args.vocab_size, (args.batch_size, args.block_size + 1))
    batch = (x[:, :-1].contiguous(), x[:, 1:].contiguous())  # (B, T) each

    ours.train(), hf.train()
    steps = {"mmfm": make_step(ours, ours.parameters(), True),
             "transformers": make_step(lambda i: hf(i).logits, hf.parameters(), False)}
    for step in steps.values():  # warm-up
        step(*batch)
    train = best_rate({k: (lambda s=s: [s(*batch) for _ in range(args.train_steps)]) for k, s in steps.items()},
                      batch[0].numel() * args.train_steps, args.rounds)

    ours.eval(), hf.eval()
    prompt = torch.randint(0, args.vocab_size, (1, args.prompt_len))
    gens = {"mmfm": lambda n: ours.generate(prompt, n, temperature=0).tolist()[0],
            "transformers": lambda n: hf.generate(prompt, max_new_tokens=n, do_sample=False, use_cache=True,
                                                  pad_token_id=0)[0, args.prompt_len:].tolist()}  # no eos: n tokens
    with torch.no_grad():
        ids = {k: g(args.new_tokens) for k, g in gens.items()}  # warm-up, and the tokens compared below
        gen = best_rate({k: (lambda g=g: g(args.new_tokens)) for k, g in gens.items()}, args.new_tokens, args.rounds)
    mm_train, hf_train, mm_gen, hf_gen = train["mmfm"], train["transformers"], gen["mmfm"], gen["transformers"]
    mm_ids, hf_ids = ids["mmfm"], ids["transformers"]
    result = {
        "config": {k: getattr(args, k) for k in ("n_layer", "n_embd", "n_head", "block_size", "batch_size",
                                                   "vocab_size", "new_tokens")},
        "threads": torch.get_num_threads(), "rounds": args.rounds,
        "train_tokens_per_s": {"mmfm": round(mm_train), "transformers": round(hf_train)},
        "generate_tokens_per_s": {"mmfm": round(mm_gen), "transformers": round(hf_gen)},
        "train_ratio": round(mm_train / hf_train, 2), "generate_ratio": round(mm_gen / hf_gen, 2),
        "same_greedy_tokens": mm_ids == hf_ids, "new_tokens_each": [len(mm_ids), len(hf_ids)],
    }
    print(json.dumps(result, indent=2))
    print(f"training: mmfm {mm_train:.0f} vs transformers {hf_train:.0f} tokens/s -> {result['train_ratio']}x")
    print(f"generation: mmfm {mm_gen:.0f} vs transformers {hf_gen:.0f} tokens/s -> {result['generate_ratio']}x")
    return result


if __name__ == "__main__":
    main()
