"""Segment real medical volumes in 2-D or 3-D: a UNETR decoder (MONAI blocks) on an mmfm ViT against MONAI's U-Net.

    python recipes/segment.py                              # --data ct_bone: head CT bone, runs/segment/ct_bone
    python recipes/segment.py --data brain_lobes           # Colin27 T1, AAL regions grouped into 7 lobes
    python recipes/segment.py --data brain_lobes dims=3    # 3-D crops, ViT with a volumetric patch embedding
    python recipes/segment.py --data ct_bone --max-steps 200 baseline=false dim=96 depth=3

Data (mmfm.seg.data): axial slices resampled in-plane to `size` px (ct_bone 128, brain_lobes 96), split into slabs
along the axial axis (train / gap / held-out / gap, held-out slabs alternating val and test; no slice in two
splits). Training takes random roi x roi crops; evaluation runs MONAI's sliding-window inference over whole
held-out slices and MONAI's DiceMetric per class over the stack. Both models train --max-steps steps with the same
loss (Dice + CE), optimizer, schedule, batches. Writes <out>/metrics.json (`test/dice` = mean over foreground
classes, `test/dice/<class>`, `baseline/dice`, `baseline/dice/<class>`, the same for val), <out>/model and
<out>/baseline (segmenter.json + model.safetensors: mmfm.seg.load_segmenter), loss.png, overlay.png.

dims=3: training takes roi_depth x roi x roi crops inside one training slab (never across a gap), the ViT embeds
cubic patches (Conv3d) with a D x H x W position grid, the UNETR decoder and the U-Net are 3-D; evaluation runs
3-D sliding windows over the whole volume's image and scores the same held-out slices as in 2-D.
"""
from __future__ import annotations

import copy
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from mmfm.adapt.head import source_config
from mmfm.config import ConfigError, opt
from mmfm.data.stepstream import resumable_loader
from mmfm.registry import build_model
from mmfm.seg import (DATASETS, UNET_CHANNELS, UNET_CHANNELS_3D, CropSet3d, SegTask, SliceSet, SlabSplit, UNETRConfig,
                      build_unet, build_unetr, dice_per_class, load_volume, plot_overlays, predict_slices,
                      predict_volume, save_segmenter, slab_of, summary, unet_meta, unetr_meta)
from mmfm.train import LossHistory, Timer, make_trainer, parse_args, recipe_parser, setup_logging, split_overrides
from mmfm.train.recipe import checkpoint_to_resume, write_metrics

log = logging.getLogger("segment")
DEFAULT_PRESET = "vit-mini"
DEFAULT_STEPS = 1500  # per model: 1500 x (0.59 + 0.26) s/step loaded / ~3 = ~7 solo minutes (docs/segmentation.md)
FIXED = ("img_size", "in_chans", "num_classes", "spatial_dims", "img_depth")


@dataclass
class SegTrain:
    size: int = opt(0, lo=0)  # in-plane pixels of a slice's longer side; 0: the data set's default
    roi: int = opt(64, lo=16)  # training crop and sliding-window size (a multiple of the patch size)
    batch_size: int = opt(0, lo=0)  # 0: 8 slices (dims=2) or 2 crops of roi_depth slices (dims=3)
    lr: float = opt(1e-3, gt=0.0)
    weight_decay: float = opt(0.01, lo=0.0)
    warmup_steps: int = opt(50, lo=0)
    train_slab: int = opt(12, lo=1)  # slices per training slab
    held_slab: int = opt(6, lo=1)  # slices per held-out (val or test) slab
    gap: int = opt(3, lo=0)  # slices dropped between slabs of different splits
    feature_size: int = opt(16, lo=1)  # UNETR decoder channels at full resolution
    baseline: bool = True  # also train MONAI's UNet from scratch at equal steps
    path: str = ""  # the source file/folder (default: where the Debian package installs it)
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    progress: bool = True
    dims: int = opt(2, choices=(2, 3))  # 3: 3-D crops, a ViT with a volumetric patch embedding, 3-D U-Net
    roi_depth: int = opt(0, lo=0)  # dims=3: crop and window depth in slices (<= train_slab); 0: 8

    def validate(self) -> None:
        if self.dims == 2 and self.roi_depth:
            raise ConfigError(f"roi_depth={self.roi_depth} is for dims=3 (2-D crops are single slices)")
        if self.dims == 3 and self.crop_depth > self.train_slab:
            raise ConfigError(f"dims=3: roi_depth={self.crop_depth} is thicker than a training slab (train_slab="
                              f"{self.train_slab}); a crop must lie inside one slab")

    @property
    def crop_depth(self) -> int:
        return self.roi_depth or 8

    @property
    def batch(self) -> int:
        return self.batch_size or (8 if self.dims == 2 else 2)

    @property
    def window(self) -> tuple[int, ...]:
        """The crop / sliding-window size: (roi, roi) or (depth, roi, roi)."""
        return (self.roi,) * 2 if self.dims == 2 else (self.crop_depth, self.roi, self.roi)


def build_parser():
    p = recipe_parser(__doc__.splitlines()[0], DEFAULT_PRESET, DEFAULT_STEPS, "runs/segment/<data>")
    p.add_argument("--data", default="ct_bone", choices=DATASETS, help="which volume and labels")
    return p


def make_unetr(preset: str, train: SegTrain, n_classes: int, overrides: dict):
    """A UNETR on a fresh ViT of `preset` (1 channel, roi-sized) or on a saved ViT folder's weights; dims=3: a
    fresh ViT with a volumetric patch embedding and a depth x roi x roi position grid."""
    bad = sorted(set(overrides) & set(FIXED))
    if bad:
        raise ConfigError(f"{', '.join(bad)}: set by the data (roi, dims, 1 channel, classes), not by model overrides")
    if train.dims == 3 and Path(preset).exists():
        raise ConfigError(f"dims=3 with --preset {preset}: a saved ViT has a 2-D patch embedding; dims=3 builds a "
                          f"fresh ViT from a preset name")
    base = dict(patch_size=8) if preset == DEFAULT_PRESET else {}
    volume = dict(spatial_dims=3, img_depth=train.crop_depth) if train.dims == 3 else {}
    vit = build_model(preset, **{**base, **overrides, **volume, "img_size": train.roi, "in_chans": 1,
                                 "num_classes": 0})
    if vit.config.family != "vit" or any(s % vit.config.patch_size for s in train.window):
        raise ConfigError(f"--preset {preset}: needs an mmfm ViT whose patch size divides the window {train.window}")
    return build_unetr(UNETRConfig(num_classes=n_classes, feature_size=train.feature_size), vit)


def make_baseline(train: SegTrain, n_classes: int):
    """MONAI's UNet (2-D, or 3-D with 3 down-steps: roi_depth must be a multiple of 8) and its meta."""
    channels = UNET_CHANNELS if train.dims == 2 else UNET_CHANNELS_3D
    if train.dims == 3 and train.crop_depth % 2 ** (len(channels) - 1):
        raise ConfigError(f"dims=3: the U-Net baseline halves the depth {len(channels) - 1} times, roi_depth="
                          f"{train.crop_depth} must be a multiple of {2 ** (len(channels) - 1)} (or baseline=false)")
    return (build_unet(1, n_classes, channels, spatial_dims=train.dims),
            dict(channels=channels, spatial_dims=train.dims))


def fit(args, train: SegTrain, model, loader, name: str, title: str):
    run = copy.copy(args)
    run.out = str(Path(args.out) / name)
    task = SegTask(model, train.lr, train.weight_decay, train.warmup_steps, args.max_steps)
    trainer = make_trainer(run, callbacks=[LossHistory(run.out, title=title)], enable_progress_bar=train.progress,
                           limit_val_batches=0)
    resume = checkpoint_to_resume(str(Path(args.resume) / name)) if args.resume else None
    trainer.fit(task, loader, ckpt_path=resume)
    log.info("%s: %d steps, %d parameters", name, trainer.global_step, sum(p.numel() for p in model.parameters()))
    return model.cpu().eval()


def evaluate(model, vol, split: dict, window: tuple, baseline: bool) -> tuple[dict, dict]:
    """Dice on the val and test slabs: keys val/dice..., test/dice... (UNETR) or val/baseline/dice...,
    baseline/dice... (the U-Net). 2-D: windows over each held-out slice; 3-D: windows over the whole volume's
    image, the held-out slices of the prediction scored."""
    metrics, preds = {}, {}
    whole = predict_volume(model, vol.image, window) if len(window) == 3 else None
    for s in ("val", "test"):
        z = split[s]
        preds[s] = whole[z] if whole is not None else predict_slices(model, vol.image[z], window[0])
        prefix = {"val": "val/baseline", "test": "baseline"}[s] if baseline else s
        metrics.update(summary(dice_per_class(preds[s], vol.labels[z], vol.classes), prefix))
    return metrics, preds


def require_monai() -> None:
    if importlib.util.find_spec("monai") is None:
        raise SystemExit("recipes/segment.py needs MONAI: pip install monai  (or pip install -e '.[data]')")


def main(argv=None):
    setup_logging()
    require_monai()
    parser = build_parser()
    args = parse_args(parser, argv)
    routed = split_overrides(args.overrides, model=source_config(args.preset), train=SegTrain())
    train = SegTrain(**routed["train"])
    train.validate()
    if args.out == "runs/segment/<data>":
        args.out = f"runs/segment/{args.data}" + ("_3d" if train.dims == 3 else "")
    if train.threads:
        torch.set_num_threads(train.threads)
    torch.manual_seed(args.seed)
    timer = Timer()
    vol = load_volume(args.data, train.size or None, train.path or None)
    split = SlabSplit(train.train_slab, train.held_slab, train.gap)(len(vol.image))
    log.info("%s: %s", vol.name, vol.chain)
    log.info("slabs along axis 0 (%d slices): %s", len(vol.image), slab_of(split))
    models = {"unetr": make_unetr(args.preset, train, len(vol.classes), routed["model"])}
    if train.baseline:
        models["baseline"], unet_cfg = make_baseline(train, len(vol.classes))
    metrics = {"data": vol.name, "classes": vol.classes, "slices": {s: len(z) for s, z in split.items()},
               "max_steps": args.max_steps, "image_shape": list(vol.image.shape[1:]), "spacing_mm": vol.spacing,
               "dims": train.dims, "window": list(train.window)}
    out, preds = Path(args.out), {}
    for name, net in models.items():
        torch.manual_seed(args.seed)  # the same crops and batches for both models
        crops = (SliceSet(vol, split["train"], train.roi, repeat=64) if train.dims == 2 else
                 CropSet3d(vol, split["train"], train.roi, train.crop_depth, repeat=64))
        loader = resumable_loader(crops, train.batch, args.seed)
        started = timer.elapsed
        net = fit(args, train, net, loader, name, f"{name} on {vol.name}")
        m, preds[name] = evaluate(net, vol, split, train.window, baseline=name != "unetr")
        metrics.update({**m, f"train_s/{name}": round(timer.elapsed - started, 1)})
        log.info("%s: %s", name, {k: v for k, v in m.items() if not k.startswith("val")})
        meta = unetr_meta(net, vol.classes) if name == "unetr" else unet_meta(1, len(vol.classes), vol.classes,
                                                                              **unet_cfg)
        save_segmenter(net, meta, out / ("model" if name == "unetr" else "baseline"))
    z = split["test"]
    labels = {"unetr": "UNETR (mmfm ViT)", "baseline": "MONAI UNet"}
    plot_overlays(vol.image[z], vol.labels[z], {labels[k]: p["test"] for k, p in preds.items()}, vol.classes,
                  out / "overlay.png", title=f"{vol.name} ({train.dims}-D): held-out test slices, truth vs prediction")
    metrics["wall_s"] = round(timer.elapsed, 1)
    write_metrics(out, metrics)
    return metrics


if __name__ == "__main__":
    main()
