"""Fine-tune an mmfm image backbone (ViT, or CLIP's image tower) on a labelled task: linear probe, LoRA or full.

    python datasets/brain_mri_patches.py                    # builds data/brain_mri_patches.npz (one-time)
    python recipes/finetune.py --init runs/clip/model --data brain_mri --method lora
    python recipes/finetune.py --init vit-test --data my_medmnist.npz --method full label_fraction=0.1 weighted_loss=true
    python recipes/finetune.py --init runs/clip/model --data my_xrays/ --method lora     # an ImageFolder

`--data` (and `--val-data`, `--test-data`): an ImageFolder, a CSV of path,label, a MedMNIST-layout .npz, a
DICOM or NIfTI folder with labels.csv, or `brain_mri`, `digits`, `animals` (mmfm.data.labelled; docs/data.md).
Without --val-data / --test-data those splits are drawn from --data by --seed (val_fraction, test_fraction).
Early stopping on the validation loss; the best validation checkpoint is restored before testing. Writes <out>/model (a plain mmfm ViT with the task
head, LoRA merged: mmfm.build_model(<out>/model)), <out>/metrics.json (flat keys: val/..., test/...),
confusion_{val,test}.png, loss.png, logs/ and checkpoints/; with explain=N also explain_gradcam.png (and for a ViT
explain_rollout.png): overlays for N test images (mmfm.explain). A MedMNIST-layout .npz named after an official
data set (pathmnist.npz, chestmnist_64.npz, ...) also gets {val,test}/medmnist/{acc,auc} as MedMNIST's Evaluator.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from mmfm.adapt import (METHODS, TaskKind, balanced_weights, build_adapted, count_params, is_lora, merge_lora,
                        source_config)
from mmfm.adapt.data import label_subset, load_task, pixel_stats, to_backbone_input
from mmfm.adapt.task import AdaptTask
from mmfm.config import opt
from mmfm.data.stepstream import resumable_loader
from mmfm.eval.classification import classification_metrics, confusion, plot_confusion
from mmfm.eval.medmnist import medmnist_flag, medmnist_metrics
from mmfm.explain import save_explanations
from mmfm.train import LossHistory, Timer, finish, make_trainer, parse_args, recipe_parser, setup_logging, split_overrides
from mmfm.train.budget import time_limit
from mmfm.train.classify import predict
from mmfm.train.recipe import checkpoint_to_resume, resolve_accelerator
from mmfm.train.strategies import gathered

log = logging.getLogger("finetune")
METHOD_LR = {"linear": 1e-2, "lora": 2e-3, "full": 1e-3}


@dataclass
class FinetuneTrain:
    lr: float | None = opt(None, gt=0.0)  # None: METHOD_LR[method]
    batch_size: int = opt(64, lo=1)
    weight_decay: float = opt(0.01, lo=0.0)
    warmup_steps: int = opt(20, lo=0)
    label_fraction: float = opt(1.0, gt=0.0, hi=1.0)  # share of the training labels used (stratified per class)
    weighted_loss: bool = False  # inverse-frequency class weights / pos_weight from the training labels
    lora_rank: int = opt(8, lo=1)
    lora_alpha: float = 16.0
    lora_dropout: float = opt(0.0, lo=0.0, lt=1.0)
    val_every: int = opt(50, lo=1)  # steps between validations
    val_subset: int = 1024  # validation images (a fixed random subset) checked during training; 0: all
    patience: int = 4  # validations without a better val/loss before stopping
    val_fraction: float = opt(0.1, lo=0.0, lt=1.0)  # of --data without --val-data (an .npz keeps its own splits)
    test_fraction: float = opt(0.2, lo=0.0, lt=1.0)  # of --data without --test-data
    max_bad_fraction: float = opt(0.05, lo=0.0, hi=1.0)  # unreadable image files skipped and counted; past this: stop
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    progress: bool = True  # the progress bar (off for grids of runs)
    max_minutes: float = opt(0.0, lo=0.0)  # >0: also stop training after this many minutes (rank 0's clock), whichever first
    explain: int = opt(0, lo=0)  # >0: Grad-CAM (and for a ViT attention-rollout) overlays of this many test images


def build_parser():
    p = recipe_parser(__doc__.splitlines()[0], "vit-test", 1000, "runs/finetune")
    p.add_argument("--init", dest="preset", help="the backbone: a preset or saved folder (same as --preset)")
    p.add_argument("--data", default="brain_mri", help="ImageFolder, path,label CSV, .npz, DICOM/NIfTI folder with "
                   "labels.csv, or brain_mri, digits, animals")
    p.add_argument("--val-data", default=None, help="validation images (same formats; default: split from --data)")
    p.add_argument("--test-data", default=None, help="test images (same formats; default: split from --data)")
    p.add_argument("--method", default="linear", choices=METHODS)
    p.add_argument("--from-scratch", action="store_true", help="same architecture, random initial weights")
    return p


def make_inputs(task, vit_cfg, stats, train: FinetuneTrain, seed: int):
    """{split: (images, targets)} with the training split cut to `label_fraction`."""
    out = {s: (to_backbone_input(task.images[s], vit_cfg.img_size, vit_cfg.in_chans, *stats), task.targets(s))
           for s in ("train", "val", "test")}
    keep = label_subset(out["train"][1], train.label_fraction, seed)
    out["train"] = (out["train"][0][keep], out["train"][1][keep])
    return out


def subset(pair, n: int, seed: int):
    """A fixed random subset of n (images, targets) pairs (all when n is 0 or larger than the split)."""
    if not n or n >= len(pair[1]):
        return pair
    keep = torch.randperm(len(pair[1]), generator=torch.Generator().manual_seed(seed))[:n]
    return pair[0][keep], pair[1][keep]


def evaluate(model, kind: TaskKind, data, names, out: Path, medmnist: str | None = None) -> dict:
    """Metrics per split; for a data set named after an official MedMNIST one (`medmnist` = its flag), also
    `<split>/medmnist/acc` and `/auc` computed as MedMNIST's Evaluator does (mmfm.eval.medmnist)."""
    metrics = {}
    for split in ("val", "test"):
        images, targets = data[split]
        scores = kind.scores(predict(model, images))
        metrics.update(classification_metrics(kind.kind, scores, targets, prefix=f"{split}/"))
        if medmnist:
            m = medmnist_metrics(kind.kind, targets.cpu().numpy(), scores.cpu().numpy())
            metrics.update({f"{split}/medmnist/{k}": v for k, v in m.items()})
        plot_confusion(confusion(kind.kind, scores, targets), names, out / f"confusion_{split}.png", f"{split} ({out.name})")
    return metrics


def restore_best(trainer, task, val_loader) -> float:
    """Load the best-val/loss checkpoint into `task` (Lightning's own loader); returns that val/loss."""
    best = next((c for c in trainer.checkpoint_callbacks if c.monitor == "val/loss"), None)
    if best is None or not best.best_model_path:
        return float("nan")
    return trainer.validate(task, val_loader, ckpt_path=best.best_model_path, verbose=False)[0]["val/loss"]


def run_device(args) -> torch.device:
    """The device this process trains on (its own GPU under DDP), for work done before fit."""
    if resolve_accelerator(args.device)[0] == "gpu":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def frozen_features(vit, data, device) -> dict:
    """{split: (pooled features (N, dim), targets)} of a frozen backbone on `device`, in eval mode (no dropout)."""
    head, vit.head = vit.head, nn.Identity()
    try:
        vit.to(device)
        return {s: (predict(vit, x), y) for s, (x, y) in data.items()}
    finally:
        vit.head = head


def fit(args, train: FinetuneTrain, module, data, title: str):
    """Train with early stopping on val/loss, restore the best checkpoint: (trainer, stopped early, best val/loss)."""
    from lightning.pytorch.callbacks import EarlyStopping

    loader = resumable_loader(TensorDataset(*data["train"]), min(train.batch_size, len(data["train"][1])), args.seed,
                              drop_last=False)
    val_loader = DataLoader(TensorDataset(*subset(data["val"], train.val_subset, args.seed)), batch_size=512)
    stop = EarlyStopping(monitor="val/loss", mode="min", patience=train.patience)
    trainer = make_trainer(args, callbacks=[LossHistory(args.out, title=title), stop], val_every=train.val_every,
                           best_metric="val/loss", num_sanity_val_steps=0, enable_progress_bar=train.progress,
                           **time_limit(train.max_minutes))
    trainer.fit(module, loader, val_loader, ckpt_path=checkpoint_to_resume(args.resume))
    best = restore_best(trainer, module, val_loader)
    return trainer, stop.wait_count >= stop.patience, best


def main(argv=None):
    setup_logging()
    args = parse_args(build_parser(), argv)
    cfg = source_config(args.preset)
    routed = split_overrides(args.overrides, model=cfg, train=FinetuneTrain())
    train = FinetuneTrain(**routed["train"])
    if train.threads:
        torch.set_num_threads(train.threads)
    torch.manual_seed(args.seed)
    size = routed["model"].get("img_size", cfg.img_size)
    task = load_task(args.data, val_data=args.val_data, test_data=args.test_data, size=size, seed=args.seed,
                     val_fraction=train.val_fraction, test_fraction=train.test_fraction,
                     max_bad_fraction=train.max_bad_fraction)  # read and checked before anything is written
    kind = TaskKind(task.kind, task.n_classes)
    lora = dict(lora_rank=train.lora_rank, lora_alpha=train.lora_alpha, lora_dropout=train.lora_dropout)
    model = build_adapted(args.preset, kind.n_outputs, args.method, args.from_scratch,
                          lora if args.method == "lora" else None, **routed["model"])
    vit_cfg = (model.get_base_model() if is_lora(model) else model).config
    stats = pixel_stats(cfg.replace(**routed["model"]))
    data = make_inputs(task, vit_cfg, stats, train, args.seed)
    log.info("pixels, after the data chain: backbone input %dx%d, %d channel(s), normalised by mean %s std %s",
             vit_cfg.img_size, vit_cfg.img_size, vit_cfg.in_chans, stats[0], stats[1])
    if train.weighted_loss:
        kind.weight = balanced_weights(data["train"][1], kind.kind, kind.n_classes)
    log.info("%s on %s (%s, %d classes): %d train / %d val / %d test, %s", args.method, task.name, kind.kind,
             kind.n_classes, len(data["train"][1]), len(data["val"][1]), len(data["test"][1]), count_params(model))

    timer = Timer()
    net, inputs = model, data
    if args.method == "linear":  # a frozen backbone: compute its features once, then only the head trains
        net, inputs = model.head, frozen_features(model, data, run_device(args))
    lr = train.lr if train.lr is not None else METHOD_LR[args.method]
    module = AdaptTask(net, kind, lr, train.weight_decay, train.warmup_steps, args.max_steps)
    trainer, stopped, best_val_loss = fit(args, train, module, inputs, f"{args.method} on {task.name}")
    net = gathered(net)  # FSDP: the full weights on rank 0 (a collective, so every rank calls it)
    if not trainer.is_global_zero:
        return {}
    if args.method == "linear":
        model.head = net  # the trained head (under FSDP its gathered copy)
    else:
        model = net
    net.to(trainer.strategy.root_device)  # Lightning moved it back to the CPU after fit
    flag = medmnist_flag(task.name) if task.format == "npz" else None
    metrics = {**evaluate(net, kind, inputs, task.label_names, Path(args.out), flag), "val/best_loss": best_val_loss,
               "steps": trainer.global_step, "stopped_early": stopped, "method": args.method, "init": str(args.preset),
               "from_scratch": args.from_scratch, "data": task.name, "kind": kind.kind,
               "label_fraction": train.label_fraction, "n_train": len(data["train"][1]), **count_params(model),
               "format": task.format, **{f"split/{k}": v for k, v in task.sizes.items()}}
    model = merge_lora(model)
    if train.explain:
        save_explanations(model.to(trainer.strategy.root_device), data["test"][0], data["test"][1], task.label_names,
                          stats, args.out, train.explain)
    return finish(args, model, metrics, timer)


if __name__ == "__main__":
    main()
