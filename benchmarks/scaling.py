"""Throughput and memory estimates for multi-GPU runs, from FLOP counts and a measured CPU step.

    python benchmarks/scaling.py            # measures one CPU fp32 train step of each model, prints the table

For each model: training FLOPs per sample (6 x params x tokens + attention), the CPU's achieved FLOP/s
on a real step (so the FLOP count is checked against a measurement), and for 8 GPUs the samples/s at a
stated model-FLOP utilisation of the GPU's bf16 peak, plus per-GPU memory under DDP and FSDP.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import mmfm

GPUS = {"A100-80GB": 312e12, "H100-SXM": 989e12}  # dense bf16 peak FLOP/s
MFU = 0.40  # a typical utilisation for well-tuned Transformer training


def gpt_flops_per_sample(cfg, seq: int) -> float:
    n = 12 * cfg.n_layer * cfg.n_embd**2 + cfg.vocab_size * cfg.n_embd  # matmul params (tied head counted once)
    attn = 12 * cfg.n_layer * cfg.n_embd * seq  # QK^T and AV, fwd+bwd, per token
    return (6 * n + attn) * seq


def clip_flops_per_sample(cfg) -> float:
    v_tokens = (cfg.img_size // cfg.patch_size) ** 2 + 1
    v = 12 * cfg.vision_layers * cfg.vision_width**2
    t = 12 * cfg.text_layers * cfg.text_width**2
    attn = 12 * (cfg.vision_layers * cfg.vision_width * v_tokens**2 + cfg.text_layers * cfg.text_width * cfg.context_length**2)
    return 6 * (v * v_tokens + t * cfg.context_length) + attn


def train_step_time(model, batch_fn, steps: int = 3) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss = batch_fn(model)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:  # first step warms up
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def memory_gb(n_params: float, act_bytes_per_sample: float, batch: int, n_gpus: int, fsdp: bool) -> float:
    states = 16 * n_params  # bf16 weights+grads (4 B) + fp32 master (4 B) + Adam m, v (8 B)
    if fsdp:
        states /= n_gpus
    return (states + act_bytes_per_sample * batch) / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--gpus", type=int, default=8)
    args = p.parse_args()
    torch.manual_seed(0)
    rows = []

    gpt = mmfm.build_model("gpt2-124m")
    seq, b_cpu = 256, 2
    def gpt_batch(m):
        idx = torch.randint(0, 50257, (b_cpu, seq))
        return F.cross_entropy(m(idx).flatten(0, 1), idx.flatten())
    t = train_step_time(gpt, gpt_batch)
    c = gpt.config
    act = 2 * c.n_layer * seq * c.n_embd * 34 / 2 + 2 * seq * c.vocab_size * 2  # bf16 activations, flash attention
    rows.append(("gpt2-124m (seq 1024)", gpt.num_params(), gpt_flops_per_sample(c, seq) * b_cpu / t,
                 gpt_flops_per_sample(c, 1024), act * 1024 / seq, 32, t))

    clip = mmfm.build_model("clip-vit-b-32")
    b_clip = 8
    def clip_batch(m):
        img = torch.randn(b_clip, 3, 224, 224)
        txt = torch.randint(0, 49407, (b_clip, 77))
        txt[:, -1] = 49407
        fi, ft, s = m(img, txt)
        logits = s * fi @ ft.T
        target = torch.arange(b_clip)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    t = train_step_time(clip, clip_batch)
    cc = clip.config
    tokens = (cc.img_size // cc.patch_size) ** 2 + 1
    act = 2 * 34 / 2 * (cc.vision_layers * tokens * cc.vision_width + cc.text_layers * cc.context_length * cc.text_width)
    rows.append(("clip-vit-b-32 (224 px)", clip.num_params(), clip_flops_per_sample(cc) * b_clip / t,
                 clip_flops_per_sample(cc), act, 256, t))

    print(f"{'model':24} {'params':>8} {'CPU step s':>10} {'CPU GFLOP/s':>11} {'GFLOP/sample':>12} "
          + " ".join(f"{g + ' x' + str(args.gpus) + ' samples/s':>24}" for g in GPUS)
          + f" {'mem/GPU DDP GB':>14} {'mem/GPU FSDP GB':>15}")
    for name, n, cpu_flops, fps, act, batch, t in rows:
        est = [args.gpus * peak * MFU / fps for peak in GPUS.values()]
        print(f"{name:24} {n / 1e6:7.1f}M {t:10.2f} {cpu_flops / 1e9:11.1f} {fps / 1e9:12.1f} "
              + " ".join(f"{e:24,.0f}" for e in est)
              + f" {memory_gb(n, act, batch, args.gpus, False):14.1f} {memory_gb(n, act, batch, args.gpus, True):15.1f}")
    print(f"(GPU estimates assume {MFU:.0%} of dense bf16 peak; per-GPU batch: GPT 32 x 1024 tokens, CLIP 256 images; "
          "activations in bf16 with flash attention; the CPU column checks the FLOP count against a real fp32 step)")


if __name__ == "__main__":
    main()
