"""The detector's second stage on VAL canvases: FCOS alone, the class-agnostic ceiling of its merged boxes, and the
rescoring settings (crop contexts, top-k classes, merge IoU, objectness power) for one saved detector + classifier.

    python recipes/detect.py backbones=timm:resnet18 --out runs/r10/det_r18 progress=false
    flock -x /tmp/mmfm-cpu.lock python benchmarks/detect_second_stage.py runs/r10/det_r18/resnet18

The recipe's folder holds detector.json + model.safetensors and classifier.json + classifier.safetensors
(mmfm.detect.save_classifier). The canvases are the recipe's defaults (seed 0); only VAL is scored unless --split
test is given (--canvases N: its first N canvases only). Prints one JSON line per setting (mAP@0.5, mAP@[.5:.95], mAP@0.75, mAR@100 by torchmetrics).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch
from torch.utils.data import DataLoader

from mmfm.detect import (CanvasConfig, RescoreConfig, canvas_sets, collate, load_classifier, load_detector, mean_ap,
                         predict, rescore, split_sources)

SETTINGS = [dict(contexts=(c,), top_k=3, nms_iou=0.5) for c in (1.2, 1.45, 1.7)] + [
    dict(contexts=(1.45,), top_k=1, nms_iou=0.5), dict(contexts=(1.45,), top_k=5, nms_iou=0.5),
    dict(contexts=(1.45,), top_k=3, nms_iou=0.5, power=0.5), dict(contexts=(1.45,), top_k=3, nms_iou=0.4),
    dict(contexts=(1.45,), top_k=3, nms_iou=0.6), dict(contexts=(1.3, 1.45, 1.6), top_k=5, nms_iou=0.4),
    dict(contexts=(1.3, 1.45), top_k=5, nms_iou=0.4)]


def agnostic(items: list[dict]) -> list[dict]:
    """The same boxes with every label 0: localisation alone."""
    return [{**d, "labels": torch.zeros_like(d["labels"])} for d in items]


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", help="a recipes/detect.py backbone folder with classifier.json (pretrain_steps > 0)")
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--canvases", type=int, default=None, help="score the first N canvases of the split "
                   "(default: all of the recipe's, 200 val / 500 test)")
    args = p.parse_args(argv)
    model, _ = load_detector(args.folder)
    second = load_classifier(args.folder)
    if second is None:
        raise SystemExit(f"{args.folder}: no classifier.json (the backbone was trained with pretrain_steps=0)")
    clf, _, side = second
    n = {f"n_{args.split}": args.canvases} if args.canvases else {}
    canvas = CanvasConfig(**n)
    sets = canvas_sets(canvas, 0, augment=False, sources=split_sources(canvas, 0))
    preds, targets, images = predict(model, DataLoader(sets[args.split], batch_size=32, collate_fn=collate))
    rows = [{"setting": "FCOS alone", **mean_ap(preds, targets)}]
    merged = rescore(preds, images, clf, RescoreConfig(top_k=1, nms_iou=0.4), side)
    rows.append({"setting": "merged boxes, class-agnostic (ceiling)", **mean_ap(agnostic(merged), agnostic(targets))})
    for s in SETTINGS:
        rows.append({"setting": s, **mean_ap(rescore(preds, images, clf, replace(RescoreConfig(), **s), side),
                                             targets)})
    for r in rows:
        print(json.dumps(r), flush=True)
    return rows


if __name__ == "__main__":
    main()
