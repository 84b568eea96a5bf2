"""Class-conditional GAN (DCGAN generator, spectral-norm projection discriminator + auxiliary classifier, hinge
loss) on the DiT's data: the real 28x28 MNIST-5k digits + animal silhouettes, 20 classes, scored by the DiT's
judge.

    python recipes/gan_train.py                                   # gan-mini, CPU, <= 10 min, runs/gan
    python recipes/gan_train.py g_width=128 n_dis=2 max_minutes=5 --out runs/gan_wide
    python recipes/gan_train.py --preset gan-test --max-steps 20 limit=64 classifier=none --out /tmp/gan_smoke

The same data split, judge (runs/vit/model) and metrics as recipes/dit_train.py (mmfm.eval.gen_quality:
conditional accuracy per dataset and FID in the judge's feature space beside the real-vs-real floor), so the two
compare at equal CPU time (max_minutes=). Writes <out>/model (the EMA generator: `mmfm.build_model(<out>/model)`),
<out>/samples.png (rows = classes, columns = seeds), <out>/metrics.json (cond_accuracy/<ds>, fid/<ds>, train_s,
steps; raw/... for the live generator beside the EMA one), loss.png, logs/, checkpoints/.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

import mmfm
from mmfm.config import ConfigError, opt
from mmfm.data.stepstream import resumable_loader
from mmfm.eval.gen_quality import evaluate_samples
from mmfm.models.gan import Discriminator
from mmfm.registry import read_config
from mmfm.train import LossHistory, Timer, checkpoint_to_resume, finish, make_trainer, parse_args, recipe_parser, setup_logging, split_overrides
from mmfm.train.classify import load_labelled
from mmfm.train.diffusion import column_noise, save_grid
from mmfm.train.ema import EMA
from mmfm.train.gan import GANTask, generate_images

log = logging.getLogger("gan_train")


@dataclass
class GANTrain:
    datasets: str = "digits,animals"
    batch_size: int = opt(64, lo=1)
    lr: float = opt(2e-4, gt=0.0)  # generator
    d_lr: float = opt(2e-4, gt=0.0)  # discriminator
    beta1: float = opt(0.5, lo=0.0, lt=1.0)  # Adam betas (SNGAN's standard-CNN setting: 0.5, 0.9)
    beta2: float = opt(0.9, lo=0.0, lt=1.0)
    n_dis: int = opt(1, lo=1)  # discriminator steps per generator step
    aux_weight: float = opt(1.0, lo=0.0)  # AC-GAN classifier term beside the projection (mmfm.train.gan); 0: off
    ema_decay: float = opt(0.999, lo=0.0, lt=1.0)  # the saved and scored generator is this EMA of the weights
    classifier: str | None = "runs/vit/model"  # the DiT's quality judge (recipes/vit_classify.py); none: skip
    eval_seed: int = 0
    max_minutes: float = opt(10.0, lo=0.0)  # >0: also stop training after this many minutes, whichever first
    limit: int | None = None  # images per dataset and split (tests, smoke runs)
    threads: int = 0  # torch CPU threads; 0 keeps torch's default


def check_judge(path: str | None, n_classes: int) -> str | None:
    """The judge's folder, or None for classifier=none; a missing or mismatched judge stops before training."""
    if path in (None, "", "none"):
        log.warning("classifier=none: conditional accuracy and FID are skipped (no quality metrics)")
        return None
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"classifier={path}: no saved classifier there (config.json missing); make it with "
                                "`python recipes/vit_classify.py --out runs/vit` or pass classifier=none")
    if read_config(Path(path)).num_classes != n_classes:
        raise ConfigError(f"classifier={path} has {read_config(Path(path)).num_classes} classes; the data has {n_classes}")
    return path


def main(argv=None):
    setup_logging()
    args = parse_args(recipe_parser(__doc__.splitlines()[0], "gan-mini", 100000, "runs/gan"), argv)
    cfg = read_config(Path(args.preset)) if Path(args.preset).is_dir() else mmfm.get_config(args.preset)
    routed = split_overrides(args.overrides, model=cfg, train=GANTrain())
    train = GANTrain(**routed["train"])
    if train.threads:
        torch.set_num_threads(train.threads)
    names = tuple(train.datasets.split(","))
    data, test = load_labelled(names, "train", limit=train.limit), load_labelled(names, "test", limit=train.limit)
    judge = check_judge(train.classifier, len(data.class_names))
    torch.manual_seed(args.seed)
    shape = {"num_classes": len(data.class_names), "channels": data.images.shape[1], "image_size": data.images.shape[-1]}
    generator = mmfm.build_model(args.preset, **({} if Path(args.preset).is_dir() else shape), **routed["model"])
    disc = Discriminator(generator.config)
    log.info("%s: %d generator + %d discriminator params, %d train images, classes %s", args.preset,
             generator.num_params(), sum(p.numel() for p in disc.parameters()), len(data.labels), data.class_names)
    task = GANTask(generator, disc, train.lr, train.d_lr, (train.beta1, train.beta2), train.n_dis,
                   train.aux_weight)
    loader = resumable_loader(TensorDataset(data.images, data.labels), train.batch_size, args.seed)
    ema = EMA(train.ema_decay, attr="generator")
    hist = LossHistory(args.out, prefixes=("train/d_loss", "train/g_loss"), title="GAN hinge losses")
    budget = {"max_time": timedelta(minutes=train.max_minutes)} if train.max_minutes > 0 else {}
    timer = Timer()
    trainer = make_trainer(args, callbacks=[ema, hist], limit_val_batches=0, **budget)
    trainer.fit(task, loader, ckpt_path=checkpoint_to_resume(args.resume))
    train_s = timer.elapsed
    if not trainer.is_global_zero:
        return {}
    device = trainer.strategy.root_device
    metrics = {"steps": trainer.global_step, "train_s": round(train_s, 2), "params": generator.num_params(),
               "train/d_loss": float(trainer.callback_metrics["train/d_loss"]),
               "train/g_loss": float(trainer.callback_metrics["train/g_loss"])}
    best = ema.model.to(device).eval()
    if judge is not None:
        classifier = mmfm.build_model(judge).eval().to(device)
        floors: dict = {}
        for tag, g in (("", best), ("raw/", generator.to(device))):
            scores = evaluate_samples(lambda y, g=g: generate_images(g, y, train.eval_seed), classifier, test,
                                      train.eval_seed, floors, tag=tag or "ema")
            metrics.update({tag + k: v for k, v in scores.items() if not (tag and k.startswith("fid_floor"))})
    save_samples(best, data.class_names, Path(args.out) / "samples.png")
    metrics["eval_s"] = round(timer.elapsed - train_s, 2)
    return finish(args, best.cpu(), metrics, timer)


@torch.no_grad()
def save_samples(generator, class_names, path: Path, seeds=tuple(range(8))) -> Path:
    """One row per class, one column per seed (the same noise down a column), from the (eval-mode) generator."""
    rows, cols = len(class_names), len(seeds)
    device = next(generator.parameters()).device
    z = column_noise((generator.config.z_dim,), rows, list(seeds))  # (rows * cols, z_dim)
    labels = torch.arange(rows).repeat_interleave(cols)  # (rows * cols,)
    images = generator.eval()(z.to(device), labels.to(device)).cpu()  # (rows * cols, C, H, W)
    out = save_grid(images, rows, path, list(class_names), [f"s{s}" for s in seeds], "GAN (EMA generator)")
    log.info("wrote %s", out)
    return out


if __name__ == "__main__":
    main()
