"""Solo training speed of recipes/detect.py's two stages per backbone, to size its step-driven defaults: the
classification pretraining (crops of train-split sources, batch 128, 32 px) and the detector (canvases drawn in the
loop as in the recipe, batch 16; --augment adds the recipe's optional augmentation). Run alone under the lock:

    flock -x /tmp/mmfm-cpu.lock python benchmarks/detect_speed.py --steps 20
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.data import DataLoader

import torch.nn.functional as F

from mmfm.detect import (CLASS_NAMES, CanvasConfig, DetectorConfig, SourceCrops, build_detector, canvas_sets, collate,
                         default_vit, source_classifier, split_sources)
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


def pretrain_seconds_per_step(backbone: str, crops, steps: int, batch: int, warmup: int = 3) -> float:
    torch.manual_seed(0)
    cfg = DetectorConfig(backbone=backbone, num_classes=len(CLASS_NAMES))
    model = source_classifier(backbone, cfg.num_classes, vit=default_vit(cfg) if backbone == "vit" else None)
    opt = build_optimizer(model, 2e-3, 0.05)
    it = iter(DataLoader(crops, batch_size=batch, shuffle=True))
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        images, labels = next(it)
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--pretrain-batch", type=int, default=128)
    p.add_argument("--backbones", default="vit,timm:resnet18")
    p.add_argument("--augment", action="store_true", help="the detection canvases augmented (off in the recipe)")
    a = p.parse_args()
    sources = split_sources(CanvasConfig())
    sets = canvas_sets(CanvasConfig(), augment=a.augment, sources=sources)
    crops = SourceCrops(sources["train"], n=(a.steps + 3) * a.pretrain_batch, side=32, scales=(20, 32))
    out = {}
    for b in a.backbones.split(","):
        s = seconds_per_step(b, sets, a.steps, a.batch)
        out[b] = {"s_per_step": round(s, 3), "pretrain_s_per_step": round(pretrain_seconds_per_step(
            b, crops, a.steps, a.pretrain_batch), 3)}
        print(json.dumps({b: out[b]}), flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
