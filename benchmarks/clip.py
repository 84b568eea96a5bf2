"""Training-step throughput of mmfm's CLIP vs open_clip at the same config, CPU fp32, in one run.

    flock -x /tmp/mmfm-cpu.lock python benchmarks/clip.py --json runs/bench_clip.json   # clip-mini dims, RGB
    python benchmarks/clip.py --preset clip-test --batch 64 --steps 10

Both models hold the same weights (open_clip's is made by mmfm.interop.to_open_clip; the script records both
losses on the first batch), take the same images, use the same contrastive loss (open_clip's ClipLoss) and
the same optimizer (torch's default foreach AdamW). The contenders alternate step by step, so that machine
noise hits all of them; the median step time is reported. Two numbers, in this order:
  model for model  - mmfm on exactly open_clip's input: every caption padded to the context length;
  pipeline         - mmfm with padding cut to the batch's longest caption, as mmfm's data pipeline feeds it
                     (identical outputs for a causal tower pooled at end-of-text, tests/test_clip_data.py);
                     open_clip cannot take it (its positional table is added whole), so this ratio measures
                     the shorter input as much as the model.
"""
import argparse
import json
import statistics
import time

import torch

import mmfm
from mmfm.interop import to_open_clip


def make_batch(cfg, batch: int, caption_len: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, cfg.img_size, cfg.img_size, generator=g)
    text = torch.zeros(batch, cfg.context_length, dtype=torch.long)
    lengths = torch.randint(caption_len // 2, caption_len + 1, (batch,), generator=g)
    for i, n in enumerate(lengths.tolist()):
        text[i, :n] = torch.randint(1, cfg.eot_id, (n,), generator=g)
        text[i, n] = cfg.eot_id  # end-of-text: the largest id, where both libraries pool
    return images, text, text[:, : int(lengths.max()) + 1]


def step_fn(model, forward, loss_fn):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(images, text):
        img, txt, scale = forward(images, text)
        loss = loss_fn(img, txt, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="clip-mini")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=15, help="timed steps per contender (after 3 warm-up steps)")
    p.add_argument("--caption-len", type=int, default=10, help="longest caption in tokens (before end-of-text)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result here")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    from open_clip.loss import ClipLoss
    from mmfm.train.recipe import parse_value

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    over = {k: parse_value(v) for k, v in (o.split("=", 1) for o in args.overrides)}
    over = {"in_chans": 3, "image_mean": (0.5,) * 3, "image_std": (0.5,) * 3, "tokenizer": "clip", **over}
    ours = mmfm.build_model(args.preset, **over).train()
    theirs = to_open_clip(ours).train()
    images, padded, trimmed = make_batch(ours.config, args.batch, args.caption_len)
    loss = ClipLoss()
    contenders = {
        "open_clip": (step_fn(theirs, lambda i, t: theirs(i, t)[:3], loss), padded),
        "mmfm": (step_fn(ours, ours, loss), padded),
        "mmfm_pipeline": (step_fn(ours, ours, loss), trimmed),
    }
    with torch.no_grad():  # the same weights and inputs give the same loss
        first_loss = {k: round(float(loss(*f(images, t)[:3])), 5) for k, (f, t) in
                      {"open_clip": (theirs, padded), "mmfm": (ours, padded), "mmfm_pipeline": (ours, trimmed)}.items()}
    times = {k: [] for k in contenders}
    for r in range(3 + args.steps):
        for name, (step, text) in contenders.items():
            t0 = time.perf_counter()
            step(images, text)
            if r >= 3:
                times[name].append(time.perf_counter() - t0)
    sps = {k: args.batch / statistics.median(v) for k, v in times.items()}
    import open_clip

    settings = {"open_clip": f"open_clip {open_clip.__version__} CLIP (nn.MultiheadAttention, float causal mask), "
                             f"text padded to {ours.config.context_length}",
                "mmfm": f"mmfm CLIP (F.scaled_dot_product_attention), text padded to {ours.config.context_length}",
                "mmfm_pipeline": f"mmfm CLIP, text trimmed to the longest caption ({trimmed.shape[1]} tokens)"}
    result = {"preset": args.preset, "batch": args.batch, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "common": "fp32, same weights, ClipLoss, torch AdamW (foreach, lr 1e-4), median of alternating steps",
              "settings": settings, "initial_loss": first_loss,
              "params": ours.num_params(), "context_length": ours.config.context_length,
              "text_tokens_trimmed": trimmed.shape[1],
              "samples_per_s": {k: round(v, 1) for k, v in sps.items()},
              "ratio_model_for_model": round(sps["mmfm"] / sps["open_clip"], 3),
              "ratio_pipeline": round(sps["mmfm_pipeline"] / sps["open_clip"], 3)}
    print(json.dumps(result, indent=2))
    print(f"model for model (same padded text): mmfm {sps['mmfm']:.1f} vs open_clip {sps['open_clip']:.1f} "
          f"samples/s -> {result['ratio_model_for_model']}x")
    print(f"pipeline (mmfm's trimmed text, not a model comparison): {sps['mmfm_pipeline']:.1f} samples/s -> "
          f"{result['ratio_pipeline']}x open_clip")
    for k, v in settings.items():
        print(f"  {k}: {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
