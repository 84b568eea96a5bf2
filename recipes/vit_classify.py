"""Supervised ViT classifier on the real 28x28 data (MNIST-5k digits + animal silhouettes, 20 classes).

    python recipes/vit_classify.py                       # default: a small ViT, runs/vit
    python recipes/vit_classify.py datasets=digits dim=64 --max-steps 300 --out runs/vit_digits

Writes <out>/model (the classifier; mmfm.build_model(<out>/model)), <out>/metrics.json (test accuracy
per dataset on the held-out split by image), loss.png, logs/ and checkpoints/.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import mmfm
from mmfm.config import opt
from mmfm.registry import read_config
from mmfm.train import LossHistory, Timer, checkpoint_to_resume, finish, make_trainer, parse_args, recipe_parser, setup_logging, split_overrides
from mmfm.train.classify import ClassifyTask, accuracy_per_dataset, load_labelled

log = logging.getLogger("vit_classify")

# the default preset at the data's shape (applied only when --preset is the default): 28x28 grey images, 4x4 patches (49 tokens)
DEFAULT_PRESET = "vit-test"
SMALL_28PX = dict(img_size=28, patch_size=4, in_chans=1, dim=96, depth=4, n_heads=4, mlp_ratio=2.0)


@dataclass
class ClassifyTrain:
    datasets: str = "digits,animals"  # comma-separated names from mmfm.train.classify.DATASETS
    batch_size: int = opt(128, lo=1)
    lr: float = opt(2e-3, gt=0.0)
    weight_decay: float = opt(0.05, lo=0.0)
    warmup_steps: int = opt(60, lo=0)
    label_smoothing: float = opt(0.1, lo=0.0, lt=1.0)
    augment: bool = True
    test_fraction: float = opt(0.2, gt=0.0, lt=1.0)
    limit: int | None = None  # images per dataset and split (tests, smoke runs)
    threads: int = 0  # torch CPU threads; 0 keeps torch's default


def main(argv=None):
    setup_logging()
    parser = recipe_parser(__doc__.splitlines()[0], DEFAULT_PRESET, 2000, "runs/vit")
    args = parse_args(parser, argv)
    cfg = read_config(Path(args.preset)) if Path(args.preset).is_dir() else mmfm.get_config(args.preset)
    routed = split_overrides(args.overrides, model=cfg, train=ClassifyTrain())
    train = ClassifyTrain(**routed["train"])
    if train.threads:
        torch.set_num_threads(train.threads)
    torch.manual_seed(args.seed)
    names = tuple(train.datasets.split(","))
    data = load_labelled(names, "train", train.test_fraction, limit=train.limit)
    test = load_labelled(names, "test", train.test_fraction, limit=train.limit)
    defaults = SMALL_28PX if args.preset == DEFAULT_PRESET else {}
    model = mmfm.build_model(args.preset, **{**defaults, "num_classes": len(data.class_names), **routed["model"]})
    log.info("%s: %d params, %d train / %d test images, classes %s", args.preset, model.num_params(),
             len(data.labels), len(test.labels), data.class_names)
    task = ClassifyTask(model, train.lr, train.weight_decay, train.warmup_steps, args.max_steps,
                        train.label_smoothing, train.augment)
    loader = DataLoader(TensorDataset(data.images, data.labels), batch_size=train.batch_size, shuffle=True,
                        drop_last=True, generator=torch.Generator().manual_seed(args.seed))
    hist = LossHistory(args.out, prefixes=("train/loss",), title="ViT classifier")
    timer = Timer()
    trainer = make_trainer(args, callbacks=[hist], limit_val_batches=0)
    trainer.fit(task, loader, ckpt_path=checkpoint_to_resume(args.resume))
    metrics = {**accuracy_per_dataset(model, test), "train/loss": float(trainer.callback_metrics["train/loss"]),
               "class_names": ",".join(data.class_names), "steps": trainer.global_step}
    return finish(args, model, metrics, timer)


if __name__ == "__main__":
    main()
