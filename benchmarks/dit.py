"""mmfm's DiT vs diffusers' DiTTransformer2DModel at equal dims, CPU fp32, one run:
training-step images/s (forward, epsilon MSE, backward, AdamW) and 50-step DDIM sampling time with
classifier-free guidance. Run alone (it reports timings):

    flock -x /tmp/mmfm-cpu.lock python benchmarks/dit.py     # dit-mini-4 (28 px) and DiT-S/2 dims on 16x16x4 latents
    python benchmarks/dit.py --configs dit-test --train-iters 2 --sample-steps 2   # smoke
A config is a preset name with optional overrides after '@': dit-s-2@input_size=16.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

import mmfm
from mmfm.diffusion import make_sampler, make_train_scheduler, sample


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


def train_images_per_s(model, cfg, batch: int, iters: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    t, y = torch.randint(0, 1000, (batch,), generator=g), torch.randint(0, cfg.num_classes, (batch,), generator=g)
    times = []
    for i in range(iters + 2):  # two warm-up steps
        t0 = time.perf_counter()
        out = model(x, t, y=y)[:, :cfg.in_channels]
        F.mse_loss(out, x).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return batch / (sum(times) / len(times))


@torch.no_grad()
def ddim_seconds(model, cfg, batch: int, steps: int, guidance: float = 4.0) -> float:
    model.eval()
    sch = make_sampler("ddim", make_train_scheduler().config)
    y = torch.arange(batch) % cfg.num_classes
    shape = (batch, cfg.in_channels, cfg.input_size, cfg.input_size)
    sample(model, sch, shape, {"y": y}, guidance, 2, generator=torch.Generator().manual_seed(0))  # warm-up
    t0 = time.perf_counter()
    sample(model, sch, shape, {"y": y}, guidance, steps, generator=torch.Generator().manual_seed(0))
    model.train()
    return time.perf_counter() - t0


def parse_config(text: str) -> tuple[str, dict]:
    from mmfm.train.recipe import parse_value

    preset, _, rest = text.partition("@")
    return preset, {k: parse_value(v) for k, v in (kv.split("=") for kv in rest.split("+") if kv)}


def compare(config: str, train_batch: int, sample_batch: int, iters: int, steps: int) -> dict:
    torch.manual_seed(0)
    preset, overrides = parse_config(config)
    ours = mmfm.build_model(preset, **overrides)
    cfg = ours.config
    theirs = DiffusersCallable(diffusers_twin(cfg), cfg.num_classes)
    row = {"config": config, "params_mmfm": ours.num_params(), "params_diffusers": sum(p.numel() for p in theirs.parameters())}
    for name, m in (("mmfm", ours), ("diffusers", theirs)):
        row[f"train_img_s_{name}"] = round(train_images_per_s(m, cfg, train_batch, iters), 2)
        row[f"ddim{steps}_s_{name}"] = round(ddim_seconds(m, cfg, sample_batch, steps), 3)
    row["train_speedup"] = round(row["train_img_s_mmfm"] / row["train_img_s_diffusers"], 3)
    row["sample_speedup"] = round(row[f"ddim{steps}_s_diffusers"] / row[f"ddim{steps}_s_mmfm"], 3)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="dit-mini-4,dit-s-2@input_size=16")
    p.add_argument("--train-batch", type=int, default=16)
    p.add_argument("--sample-batch", type=int, default=4, help="images per DDIM run (x2 rows with guidance)")
    p.add_argument("--train-iters", type=int, default=5)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--json", default=None, help="also write the rows here")
    a = p.parse_args(argv)
    rows = [compare(c, a.train_batch, a.sample_batch, a.train_iters, a.sample_steps) for c in a.configs.split(",")]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU fp32")
    for r in rows:
        print(json.dumps(r))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
