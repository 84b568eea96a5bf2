"""Does the training objective change the cost of a DiT step? x0 ("sample") vs flow matching, interleaved.

    python benchmarks/dit_objectives.py                    # dit-mini-4, batch 64, 28x28x1: the recipe's step
    python benchmarks/dit_objectives.py --steps 40 --json runs/gen/objective_cost.json

One process, two identical models and AdamW optimizers; training steps alternate x0, flow, x0, flow, ... so that
any load on the machine falls on both alike (on a shared CPU a wall-clock ratio of two separate runs measures the
neighbours). Prints the median seconds per step of each and their ratio.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import mmfm
from mmfm.diffusion import diffusion_loss, make_train_scheduler
from mmfm.diffusion.flow import make_flow_scheduler


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="dit-mini-4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=40, help="timed steps per objective (after 3 warm-up steps each)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    torch.manual_seed(0)
    schedulers = {"x0": make_train_scheduler("sample", "squaredcos_cap_v2"), "flow": make_flow_scheduler(1.0)}
    runs = {}
    for name in schedulers:
        model = mmfm.build_model(a.preset, num_classes=20)
        runs[name] = (model, torch.optim.AdamW(model.parameters(), 1e-3))
    cfg = runs["x0"][0].config
    x0 = torch.rand(a.batch_size, cfg.in_channels, cfg.input_size, cfg.input_size) * 2 - 1
    y = torch.randint(0, 20, (a.batch_size,))
    times: dict[str, list[float]] = {name: [] for name in schedulers}
    for i in range(a.steps + 3):
        for name, scheduler in schedulers.items():
            model, opt = runs[name]
            t0 = time.perf_counter()
            loss = diffusion_loss(model, scheduler, x0, {"y": y}, 0.1, model.null_label)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= 3:
                times[name].append(time.perf_counter() - t0)
    out = {name: statistics.median(ts) for name, ts in times.items()}
    out["flow_over_x0"] = out["flow"] / out["x0"]
    out.update(preset=a.preset, batch_size=a.batch_size, steps=a.steps, threads=torch.get_num_threads())
    print(json.dumps(out, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
