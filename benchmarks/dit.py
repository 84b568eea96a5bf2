"""mmfm's DiT vs diffusers' DiTTransformer2DModel at equal dims, CPU fp32, one run:
training-step images/s (forward, epsilon MSE, backward, fused AdamW on both) and 50-step DDIM sampling time
with classifier-free guidance. The peers alternate over `--rounds` timed rounds and each keeps its best.

The two are not equal in size: diffusers' DiT gives every block its own timestep and class embedders
(AdaLayerNormZero), mmfm (like the DiT paper's code) shares one, so diffusers has 14-21% more parameters at
these dims. Those embedders act on one vector per image, not per token, so they add little compute. Each row
therefore reports both parameter counts, both forward FLOPs per image (torch's FlopCounterMode), the raw ratio,
the ratio per parameter (ratio x mmfm params / diffusers params: throughput times size) and the ratio
per FLOP (ratio x mmfm FLOPs / diffusers FLOPs), the fairest of the three.
Run alone (it reports timings):

    flock -x /tmp/mmfm-cpu.lock python benchmarks/dit.py --json runs/bench_dit.json  # dit-mini-4, DiT-S/2 on 16x16x4
    python benchmarks/dit.py --configs dit-test --train-iters 2 --sample-steps 2   # smoke
A config is a preset name with optional overrides after '@': dit-s-2@input_size=16.
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

import mmfm
from mmfm.diffusion import make_sampler, make_train_scheduler, sample
from timing import best_rate  # benchmarks/timing.py


def diffusers_twin(cfg):
    """DiTTransformer2DModel with mmfm's dims (adaLN-Zero, tanh-GELU, sin-cos positions, null class id = num_classes)."""
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(num_attention_heads=cfg.num_heads, attention_head_dim=cfg.hidden_size // cfg.num_heads,
                                 in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_layers=cfg.depth,
                                 sample_size=cfg.input_size, patch_size=cfg.patch_size,
                                 num_embeds_ada_norm=cfg.num_classes, norm_type="ada_norm_zero")


class DiffusersCallable(torch.nn.Module):
    """The same call signature as mmfm's DiT: model(x, t, y) -> (B, out_channels, H, W)."""

    def __init__(self, model, num_classes: int):
        super().__init__()
        self.model, self.null_label = model, num_classes

    def forward(self, x, t, y=None):
        return self.model(x, timestep=t, class_labels=y, return_dict=False)[0]


def train_step(model, cfg, batch: int, fused: bool):
    """One training step (forward, epsilon MSE, backward, AdamW) on a fixed synthetic batch, as a callable."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    t, y = torch.randint(0, 1000, (batch,), generator=g), torch.randint(0, cfg.num_classes, (batch,), generator=g)

    def step():
        out = model(x, t, y=y)[:, :cfg.in_channels]
        F.mse_loss(out, x).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def forward_flops(model, cfg) -> float:
    """FLOPs of one forward pass per image (torch's FlopCounterMode: matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, cfg.in_channels, cfg.input_size, cfg.input_size)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.tensor([1, 500]), y=torch.tensor([0, 1]))
    return counter.get_total_flops() / 2


def ddim_run(model, cfg, batch: int, steps: int, guidance: float = 4.0):
    """One `steps`-step DDIM sampling run with classifier-free guidance (batch x 2 rows), as a callable."""
    sch = make_sampler("ddim", make_train_scheduler().config)
    y = torch.arange(batch) % cfg.num_classes
    shape = (batch, cfg.in_channels, cfg.input_size, cfg.input_size)

    @torch.no_grad()
    def run(n=steps):
        sample(model, sch, shape, {"y": y}, guidance, n, generator=torch.Generator().manual_seed(0))
    return run


def parse_config(text: str) -> tuple[str, dict]:
    from mmfm.train.recipe import parse_value

    preset, _, rest = text.partition("@")
    return preset, {k: parse_value(v) for k, v in (kv.split("=") for kv in rest.split("+") if kv)}


def compare(config: str, train_batch: int, sample_batch: int, iters: int, steps: int, rounds: int) -> dict:
    torch.manual_seed(0)
    preset, overrides = parse_config(config)
    ours = mmfm.build_model(preset, **overrides)
    cfg = ours.config
    theirs = DiffusersCallable(diffusers_twin(cfg), cfg.num_classes)
    n_ours, n_theirs = ours.num_params(), sum(p.numel() for p in theirs.parameters())
    f_ours, f_theirs = forward_flops(ours, cfg), forward_flops(theirs, cfg)
    row = {"config": config, "params_mmfm": n_ours, "params_diffusers": n_theirs,
           "gflop_per_image_mmfm": round(f_ours / 1e9, 4), "gflop_per_image_diffusers": round(f_theirs / 1e9, 4),
           "optimizer": "torch AdamW(fused=True), lr 1e-4, on both",
           "attention": "F.scaled_dot_product_attention on both (diffusers AttnProcessor2_0)"}
    steps_by = {"mmfm": train_step(ours, cfg, train_batch, True), "diffusers": train_step(theirs, cfg, train_batch, True)}
    for step in steps_by.values():  # two warm-up steps each
        step(), step()
    train = best_rate({k: (lambda s=s: [s() for _ in range(iters)]) for k, s in steps_by.items()},
                      train_batch * iters, rounds)
    ours.eval(), theirs.eval()
    runs = {"mmfm": ddim_run(ours, cfg, sample_batch, steps), "diffusers": ddim_run(theirs, cfg, sample_batch, steps)}
    for run in runs.values():
        run(2)  # warm-up
    per_s = best_rate(runs, 1.0, rounds)  # runs per second
    for k, v in train.items():
        row[f"train_img_s_{k}"] = round(v, 2)
    for k, v in per_s.items():
        row[f"ddim{steps}_s_{k}"] = round(1 / v, 3)
    speed = train["mmfm"] / train["diffusers"]
    row["train_speedup"] = round(speed, 3)
    row["train_speedup_per_param"] = round(speed * n_ours / n_theirs, 3)
    row["train_speedup_per_flop"] = round(speed * f_ours / f_theirs, 3)
    row["sample_speedup"] = round(per_s["mmfm"] / per_s["diffusers"], 3)
    row["sample_speedup_per_flop"] = round(row["sample_speedup"] * f_ours / f_theirs, 3)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="dit-mini-4,dit-s-2@input_size=16")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--sample-batch", type=int, default=4, help="images per DDIM run (x2 rows with guidance)")
    p.add_argument("--train-iters", type=int, default=5)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5, help="alternating timed rounds; each peer keeps its best")
    p.add_argument("--json", default=None, help="also write the rows here")
    a = p.parse_args(argv)
    rows = [compare(c, a.train_batch, a.sample_batch, a.train_iters, a.sample_steps, a.rounds)
            for c in a.configs.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU fp32")
    for r in rows:
        print(json.dumps(r))
        print(f"{r['config']}: params mmfm {r['params_mmfm']:,} vs diffusers {r['params_diffusers']:,}; forward "
              f"GFLOP/image {r['gflop_per_image_mmfm']} vs {r['gflop_per_image_diffusers']}; training "
              f"{r['train_speedup']}x raw, {r['train_speedup_per_param']}x per parameter, "
              f"{r['train_speedup_per_flop']}x per FLOP; DDIM sampling {r['sample_speedup']}x raw, "
              f"{r['sample_speedup_per_flop']}x per FLOP")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
