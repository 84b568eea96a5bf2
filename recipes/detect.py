"""Detect digits and animal silhouettes on canvases: torchvision FCOS on an mmfm ViT (simple feature pyramid) and on
a timm ResNet-18 (+ FPN), side by side.

    python recipes/detect.py                                   # both backbones, runs/detect
    python recipes/detect.py backbones=vit --max-steps 300 dim=96 depth=3
    python recipes/detect.py --preset runs/vit_detect/model    # a saved mmfm ViT (in_chans 1) as the ViT backbone

Canvases (mmfm.detect.canvas): 96x96, 1-4 objects of 20-40 px from MNIST-5k and the animal silhouettes (20 classes),
split by SOURCE image: no test digit or animal is in any training canvas. Per backbone, three stages:
1. pretraining (pretrain_steps: one count, or per backbone as the default "vit:0,resnet18:300"; 0 skips it): mmfm's
   ClassifyTask on 32-px crops of single TRAIN-split source images (mmfm.detect.SourceCrops; pretrain_batch,
   pretrain_lr, pretrain_side), on a copy of the detector's backbone (the ViT + a linear head, or mmfm's TimmNet
   for timm:NAME); its weights are then copied into the detector's backbone (init_from_classifier) and its
   accuracy on VAL-split crops is reported (pretrain_val_acc/<name>);
2. detection: --max-steps steps of FCOS (batch_size, lr, weight_decay, warmup_steps; the pretrained trunk at
   lr x backbone_lr_scale, one number or per backbone as "vit:1,resnet18:0.1"; augment=true adds random
   shift/zoom, off by default since every training canvas is a fresh draw);
3. second stage (rescore=true, for a backbone with pretraining): FCOS's boxes merged across classes, each named by
   the pretraining classifier on crops around it (mmfm.detect.rescore; contexts, top_k, nms_iou, max_boxes, power);
   FCOS alone is reported too, under <split>/<name>/fcos/.
The no-argument run is sized to 15 minutes for both backbones on the 2-core CPU (docs/vision_tasks.md, round nine).
`--preset` (default vit-mini with 8-px patches at the canvas size) and model overrides (dim=, depth=, n_heads=,
patch_size=) shape the ViT. Writes <out>/metrics.json (`test/map_50`, `test/map` of the first backbone, and
`test/<name>/map_50` ... for each, <name> = vit, resnet18, ...; the same for val; pretrain_s/, pretrain_val_acc/,
train_s/ per backbone), <out>/detections_<name>.png (test canvases with true and predicted boxes), and per backbone
<out>/<name>/ (detector.json + model.safetensors: load_detector, loss.png, logs/, checkpoints/, pretrain/).
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from mmfm.adapt.head import source_config
from mmfm.config import ConfigError, opt
from mmfm.data.stepstream import resumable_loader
from mmfm.detect import (CLASS_NAMES, CanvasConfig, DetectorConfig, DetectTask, RescoreConfig, SourceCrops,
                         build_detector, rescore, save_classifier,
                         canvas_sets, collate, init_from_classifier, mean_ap, plot_detections, predict, save_detector,
                         source_classifier, split_sources)
from mmfm.train.classify import ClassifyTask
from mmfm.train.classify import predict as classify
from mmfm.models.vit import ViT
from mmfm.registry import build_model
from mmfm.train import LossHistory, Timer, make_trainer, parse_args, recipe_parser, setup_logging, split_overrides
from mmfm.train.recipe import checkpoint_to_resume, write_metrics

log = logging.getLogger("detect")
DEFAULT_PRESET = "vit-mini"
DEFAULT_STEPS = 300  # detection steps per backbone (docs/vision_tasks.md sizes both stages to 15 minutes)
# classification steps (batch 128) on the train-split sources first: the ResNet-18 gains most from them (round nine:
# val mAP@0.5 0.36 after 100, 0.64 after 300), the ViT gains nothing from 300 (0.256 vs 0.247 without) and needs
# 900 for +0.09, which the 15-minute budget cannot hold beside the ResNet's 300 (docs/vision_tasks.md)
DEFAULT_PRETRAIN = "vit:0,resnet18:300"
DEFAULT_LR_SCALE = 1.0  # detection lr multiplier of the pretrained trunk (0.1 measured equal on val, round nine)
FIXED = ("img_size", "in_chans", "num_classes")  # set by the canvases, not by overrides


@dataclass
class DetectTrain:
    backbones: str = "vit,timm:resnet18"  # comma-separated: vit, timm:NAME; the first gives test/map_50, test/map
    batch_size: int = opt(16, lo=1)
    lr: float = opt(1e-3, gt=0.0)
    weight_decay: float = opt(0.05, lo=0.0)
    warmup_steps: int = opt(50, lo=0)
    augment: bool = False  # random shift/zoom of training canvases with their boxes (mmfm.detect.augmentation);
    # off by default: every training canvas is a fresh draw (n_train > steps x batch), so it only costs time
    pretrain_steps: int | str = DEFAULT_PRETRAIN  # classification steps on TRAIN-split source crops first (0: none);
    # one count for every backbone or per backbone, "vit:900,resnet18:150" (see per_backbone)
    pretrain_batch: int = opt(128, lo=1)
    pretrain_lr: float = opt(2e-3, gt=0.0)
    pretrain_side: int = opt(32, lo=16)  # crop side; the object side is drawn in [min_scale, min(max_scale, side)]
    backbone_lr_scale: float | str = DEFAULT_LR_SCALE  # the trunk's detection lr = lr x this (pyramid and head: lr);
    # one number or per backbone, "vit:0.5,resnet18:0.1"
    rescore: bool = True  # second stage: the pretraining classifier names each FCOS box (mmfm.detect.rescore;
    # backbones with pretrain_steps 0 have none); FCOS alone is reported too, as <split>/<name>/fcos/...
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    progress: bool = True


def build_parser():
    return recipe_parser(__doc__.splitlines()[0], DEFAULT_PRESET, DEFAULT_STEPS, "runs/detect")


def make_vit(preset: str, canvas: CanvasConfig, overrides: dict) -> ViT:
    """The ViT backbone: a preset (its config, fresh weights) or a saved folder (its weights), at the canvas size."""
    bad = sorted(set(overrides) & set(FIXED))
    if bad:
        raise ConfigError(f"{', '.join(bad)}: set by the canvases (size={canvas.size}, 1 channel, "
                          f"{len(CLASS_NAMES)} classes), not by model overrides")
    fixed = dict(img_size=canvas.size, num_classes=0)
    if Path(preset, "config.json").is_file():
        vit = build_model(preset, **overrides, **fixed)
    else:
        base = dict(patch_size=8) if preset == DEFAULT_PRESET else {}
        vit = build_model(preset, **{**base, **overrides, **fixed})
    if not isinstance(vit, ViT) or vit.config.in_chans != 1:
        raise ConfigError(f"--preset {preset}: needs a 1-channel mmfm ViT (a ViT preset or saved ViT folder)")
    return vit


def per_backbone(key: str, value, names: list[str], cast=int, lo: float = 0, gt: bool = False) -> dict:
    """{short name: value} for each backbone of the run (short names: vit, resnet18): `value` is one number for
    all, or "name:value,..." with an entry for every backbone of the run (vit, resnet18 or timm:resnet18; entries
    for backbones this run does not train are allowed and unused). Bad input raises ConfigError naming `key`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        table = {n: value for n in names}
    else:
        table = {}
        for part in filter(None, (p.strip() for p in str(value).split(","))):
            name, sep, number = part.rpartition(":")
            short = name.split(":")[-1].strip()
            if not sep or not short or short in table:
                raise ConfigError(f"{key}={value!r}: write one number or 'name:value,...' naming each backbone once "
                                  f"(backbones here: {', '.join(names)})")
            try:
                table[short] = float(number)
            except ValueError:
                raise ConfigError(f"{key}={value!r}: {number!r} is not a number") from None
        missing = [n for n in names if n not in table]
        if missing:
            raise ConfigError(f"{key}={value!r} has no value for backbone(s) {', '.join(missing)}")
    out = {}
    for n in names:
        v = table[n]
        if not (math.isfinite(v) and (v > lo if gt else v >= lo) and (cast is not int or v == int(v))):
            raise ConfigError(f"{key}: {n}={v!r} must be {'an integer ' if cast is int else 'a number '}"
                              f"{'>' if gt else '>='} {lo}")
        out[n] = cast(v)
    return out


def pretrain(args, train: DetectTrain, canvas: CanvasConfig, cfg: DetectorConfig, model, sources, name: str,
             steps: int) -> tuple[dict, torch.nn.Module]:
    """Classify crops of the TRAIN-split sources for `steps` steps (mmfm's ClassifyTask) on a copy of the
    detector's backbone, then copy its weights into the detector. Returns ({pretrain_val_acc/<name>: accuracy on
    val-split crops}, the classifier), the classifier being the second stage of `rescore`."""
    side = train.pretrain_side
    vit = copy.deepcopy(model.backbone.vit) if cfg.backbone == "vit" else None
    clf = source_classifier(cfg.backbone, cfg.num_classes, vit=vit, side=side)
    scales = (canvas.min_scale, min(canvas.max_scale, side))
    crops = SourceCrops(sources["train"], steps * train.pretrain_batch, side, scales, args.seed)
    run = copy.copy(args)
    run.out, run.max_steps = str(Path(args.out) / name / "pretrain"), steps
    task = ClassifyTask(clf, train.pretrain_lr, train.weight_decay, min(train.warmup_steps, run.max_steps // 5),
                        run.max_steps)
    trainer = make_trainer(run, enable_progress_bar=train.progress, limit_val_batches=0)
    resume = checkpoint_to_resume(str(Path(args.resume) / name / "pretrain")) if args.resume else None
    trainer.fit(task, resumable_loader(crops, train.pretrain_batch, args.seed), ckpt_path=resume)
    init_from_classifier(model, clf.cpu())
    x, y = SourceCrops(sources["val"], 1000, side, scales, args.seed).tensors()
    return {f"pretrain_val_acc/{name}": round((classify(clf, x).argmax(-1) == y).float().mean().item(), 4)}, clf


def train_one(args, train: DetectTrain, cfg: DetectorConfig, model, sets, name: str, lr_scale: float = 1.0):
    """Fit one detector for --max-steps steps, its trunk at lr x lr_scale; returns it (on the CPU)."""
    run = copy.copy(args)
    run.out = str(Path(args.out) / name)
    loader = resumable_loader(sets["train"], train.batch_size, args.seed, drop_last=False, collate_fn=collate)
    task = DetectTask(model, train.lr, train.weight_decay, train.warmup_steps, args.max_steps, lr_scale)
    trainer = make_trainer(run, callbacks=[LossHistory(run.out, title=f"FCOS on {cfg.backbone}")],
                           enable_progress_bar=train.progress, limit_val_batches=0)
    resume = checkpoint_to_resume(str(Path(args.resume) / name)) if args.resume else None
    trainer.fit(task, loader, ckpt_path=resume)
    log.info("%s: %d steps, %d parameters", cfg.backbone, trainer.global_step, sum(p.numel() for p in model.parameters()))
    return model.cpu(), trainer.global_step


def evaluate(model, sets, name: str, out: Path, second=None) -> dict:
    """mAP on val and test; with `second` = (classifier, RescoreConfig, side), the two-stage result under
    <split>/<name>/ and FCOS alone under <split>/<name>/fcos/."""
    metrics = {}
    for split in ("val", "test"):
        loader = DataLoader(sets[split], batch_size=32, collate_fn=collate)
        preds, targets, images = predict(model, loader)
        if second is not None:
            metrics.update(mean_ap(preds, targets, prefix=f"{split}/{name}/fcos/"))
            clf, rcfg, side = second
            preds = rescore(preds, images, clf, rcfg, side)
        metrics.update(mean_ap(preds, targets, prefix=f"{split}/{name}/"))
        if split == "test":
            plot_detections(images, preds, targets, CLASS_NAMES, out / f"detections_{name}.png",
                            title=f"FCOS on {name}: test canvases, true (green) and predicted >= 0.3 (red)")
    return metrics


def main(argv=None):
    setup_logging()
    args = parse_args(build_parser(), argv)
    routed = split_overrides(args.overrides, model=source_config(args.preset), canvas=CanvasConfig(),
                             detector=DetectorConfig(), train=DetectTrain(), rescore=RescoreConfig())
    bad = sorted(set(routed["detector"]) & set(FIXED) | {"backbone"} & set(routed["detector"]))
    if bad:
        raise ConfigError(f"{', '.join(bad)}: set by the canvases and backbones=, not by overrides")
    train, canvas = DetectTrain(**routed["train"]), CanvasConfig(**routed["canvas"])
    rcfg = RescoreConfig(**routed["rescore"])
    names = [b.strip() for b in train.backbones.split(",") if b.strip()]
    if not names or len({n.split(":")[-1] for n in names}) != len(names):
        raise ConfigError(f"backbones={train.backbones!r}: one or more distinct names (vit, timm:NAME)")
    shorts = [n.split(":")[-1] for n in names]  # vit, resnet18: the folder, picture and metric-key names
    pre_steps = per_backbone("pretrain_steps", train.pretrain_steps, shorts)
    lr_scales = per_backbone("backbone_lr_scale", train.backbone_lr_scale, shorts, float, gt=True)
    if train.threads:
        torch.set_num_threads(train.threads)
    torch.manual_seed(args.seed)
    timer = Timer()
    sources = split_sources(canvas, args.seed)
    sets = canvas_sets(canvas, args.seed, augment=train.augment, sources=sources)
    metrics = {"canvas": asdict(canvas), "max_steps": args.max_steps, "backbones": names}
    out = Path(args.out)
    for i, (name, short) in enumerate(zip(names, shorts)):
        cfg = DetectorConfig(**{**routed["detector"], "backbone": name, "img_size": canvas.size, "in_chans": 1,
                                "num_classes": len(CLASS_NAMES)})
        vit = make_vit(args.preset, canvas, routed["model"]) if name == "vit" else None
        started = timer.elapsed
        model = build_detector(cfg, vit)
        pre, clf = pretrain(args, train, canvas, cfg, model, sources, short, pre_steps[short]) \
            if pre_steps[short] else ({}, None)
        pre_s = round(timer.elapsed - started, 1)
        model, steps = train_one(args, train, cfg, model, sets, short, lr_scales[short])
        save_detector(model, cfg, out / short)
        second = (clf, rcfg, train.pretrain_side) if clf is not None and train.rescore else None
        if second:
            save_classifier(clf, {"backbone": name, "num_classes": cfg.num_classes, "side": train.pretrain_side,
                                  "rescore": asdict(rcfg)}, out / short)
        m = {**pre, **evaluate(model, sets, short, out, second), f"two_stage/{short}": second is not None}
        m.update({f"train_s/{short}": round(timer.elapsed - started, 1), f"pretrain_s/{short}": pre_s,
                  f"steps/{short}": steps, f"pretrain_steps/{short}": pre_steps[short],
                  f"backbone_lr_scale/{short}": lr_scales[short]})
        if i == 0:
            m.update({f"{s}/{k}": m[f"{s}/{short}/{k}"] for s in ("val", "test") for k in ("map", "map_50")})
        metrics.update(m)
        log.info("%s: %s", name, {k: v for k, v in m.items() if "test/" in k})
    metrics["wall_s"] = round(timer.elapsed, 1)
    write_metrics(out, metrics)
    return metrics


if __name__ == "__main__":
    main()
