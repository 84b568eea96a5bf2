"""Val-only A/B of recipes/detect.py's backbone_lr_scale: one ResNet-18 pretraining, then one detector per scale
from the SAME pretrained weights, each scored on the VAL canvases (the test canvases are not touched).

    flock -x /tmp/mmfm-cpu.lock python benchmarks/detect_lr_scale.py --scales 0.1,1.0 --steps 200 --pretrain 100
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mmfm.detect import (CLASS_NAMES, CanvasConfig, DetectorConfig, build_detector, canvas_sets, collate, mean_ap,
                         predict, split_sources)


def _recipe():
    spec = importlib.util.spec_from_file_location("detect_recipe", Path(__file__).parents[1] / "recipes/detect.py")
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = recipe  # dataclasses look their module up while the file executes
    spec.loader.exec_module(recipe)
    return recipe


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scales", default="0.1,1.0")
    p.add_argument("--steps", type=int, default=200, help="detection steps per scale (batch 16)")
    p.add_argument("--pretrain", type=int, default=100, help="pretraining steps (batch 128), once")
    p.add_argument("--backbone", default="timm:resnet18")
    p.add_argument("--out", default="runs/detect_lr_scale")
    a = p.parse_args()
    recipe = _recipe()
    recipe.setup_logging()
    args = recipe.parse_args(recipe.build_parser(), ["--out", a.out, "--max-steps", str(a.steps)])
    train, canvas = recipe.DetectTrain(progress=False), CanvasConfig()
    torch.manual_seed(0)
    sources = split_sources(canvas, 0)
    sets = canvas_sets(canvas, 0, augment=False, sources=sources)
    cfg = DetectorConfig(backbone=a.backbone, img_size=canvas.size, in_chans=1, num_classes=len(CLASS_NAMES))
    model = build_detector(cfg)
    start = time.time()
    name = a.backbone.split(":")[-1]
    res = {**recipe.pretrain(args, train, canvas, cfg, model, sources, name, a.pretrain),
           "pretrain_s": round(time.time() - start, 1)}
    print(json.dumps(res), flush=True)
    for scale in (float(s) for s in a.scales.split(",")):
        torch.manual_seed(0)
        start = time.time()
        run = copy.copy(args)
        run.out = f"{a.out}/scale{scale}"
        det, _ = recipe.train_one(run, train, cfg, copy.deepcopy(model), sets, name, scale)
        preds, targets, _ = predict(det, DataLoader(sets["val"], batch_size=32, collate_fn=collate))
        res[f"scale{scale}"] = {**mean_ap(preds, targets, "val/"), "s": round(time.time() - start, 1)}
        print(json.dumps({scale: res[f"scale{scale}"]}), flush=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "ab.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
