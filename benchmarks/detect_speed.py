"""Solo training speed of recipes/detect.py's detectors (steps/s at its default batch, canvases drawn and augmented
in the loop as in the recipe), to size its step-driven default. Run alone under the shared lock:

    flock -x /tmp/mmfm-cpu.lock python benchmarks/detect_speed.py --steps 20
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader

from mmfm.detect import CLASS_NAMES, CanvasConfig, DetectorConfig, build_detector, canvas_sets, collate
from mmfm.train.optim import build_optimizer


def seconds_per_step(backbone: str, sets, steps: int, batch: int, warmup: int = 3) -> float:
    torch.manual_seed(0)
    model = build_detector(DetectorConfig(backbone=backbone, num_classes=len(CLASS_NAMES)))
    model.train()
    opt = build_optimizer(model, 1e-3, 0.05)
    it = iter(DataLoader(sets["train"], batch_size=batch, shuffle=True, collate_fn=collate))
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        images, targets = next(it)
        loss = sum(model(list(images), targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--backbones", default="vit,timm:resnet18")
    a = p.parse_args()
    sets = canvas_sets(CanvasConfig())
    out = {}
    for b in a.backbones.split(","):
        s = seconds_per_step(b, sets, a.steps, a.batch)
        out[b] = {"s_per_step": round(s, 3), "steps_in_7.5_min": int(450 / s)}
        print(json.dumps({b: out[b]}), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
