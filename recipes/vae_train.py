"""VAE (diffusers AutoencoderKL) with L1 + KL + a patch discriminator (hinge, after a warm-up, adaptive weight)
on the real 28x28 data (MNIST-5k digits + animal silhouettes) padded to 32x32: 4x spatial compression (8x8x4 latents).

    python recipes/vae_train.py                                   # vae-mini, 3,600 steps (~15 min on 2 CPU cores), runs/vae
    python recipes/vae_train.py max_minutes=5 --max-steps 100000  # a 5-minute budget (the LR cosine follows the clock)
    python recipes/vae_train.py disc_start=100000 --out runs/vae_nogan    # the same without the adversarial term
    python recipes/vae_train.py --preset vae-test --max-steps 20 limit=64 --out /tmp/vae_smoke
    python recipes/vae_train.py --data data/emoji_clipart/pairs.csv --out runs/vae_emoji    # RGB pairs at 32x32

Writes <out>/model (a diffusers folder: `AutoencoderKL.from_pretrained(<out>/model)` opens it),
<out>/metrics.json (test/psnr and test/ssim on the held-out split by image, measured on the 28x28 image content;
val/psnr and val/ssim on val_fraction of the train split, held out from training, for choosing settings;
test/psnr_padded and test/ssim_padded on the whole padded 32x32 input, whose flat border flatters them; train_s, steps),
<out>/reconstructions.png (rows: held-out originals, reconstructions), loss.png, logs/, checkpoints/.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.utils.data import TensorDataset

from mmfm.config import ConfigError, opt
from mmfm.data.stepstream import resumable_loader
from mmfm.diffusion.captions import load_captioned
from mmfm.diffusion.latent import pad_to
from mmfm.models.vae import VAE_PRESETS, PatchDiscriminator, build_vae, compression
from mmfm.train import LossHistory, Timer, checkpoint_to_resume, finish, make_trainer, parse_args, recipe_parser, setup_logging, split_overrides
from mmfm.train.budget import BudgetClock
from mmfm.train.classify import load_labelled
from mmfm.train.diffusion import save_grid
from mmfm.train.vae import VAETask, reconstruct, reconstruction_metrics

log = logging.getLogger("vae_train")


@dataclass
class VAETrain:
    datasets: str = "digits,animals"
    batch_size: int = opt(8, lo=1)  # val PSNR at ~equal time: 21.9 dB (32, 300 steps), 23.4 (16, 480), 25.2 (8, 800)
    lr: float = opt(2e-3, gt=0.0)  # val PSNR at 300 steps (cosine): 22.8 dB against 1e-3's 21.9; 24.0 vs 23.4 at batch 16
    warmup_steps: int = opt(100, lo=0)  # linear LR warmup, then cosine decay (mmfm's build_scheduler)
    min_lr_ratio: float = opt(0.02, lo=0.0, hi=1.0)  # cosine floor: lr * min_lr_ratio at --max-steps (or the time budget)
    beta1: float = opt(0.5, lo=0.0, lt=1.0)  # the VAE's Adam betas: (0.9, 0.99) scored 21.3 dB val against 21.9 (300 steps)
    beta2: float = opt(0.9, lo=0.0, lt=1.0)  # (the discriminator keeps taming's 0.5, 0.9)
    kl_weight: float = opt(1e-6, lo=0.0)  # on the per-pixel KL (latent diffusion's ratio of sums)
    l2_weight: float = opt(0.0, lo=0.0)  # adds l2_weight * MSE to the L1 reconstruction loss
    disc_weight: float = opt(0.1, lo=0.0)  # times the adaptive weight (0.5 doubled the L1 within 100 steps, runs/vae_v1)
    disc_start: int = opt(3200, lo=0)  # VAE steps before the discriminator switches on: the last 400 of the 3,600 default
    # steps, once the LR has decayed (switched on at step 500 of a constant LR it held the L1 level, runs/r5/vae_10min)
    disc_width: int = opt(32, lo=1)
    disc_layers: int = opt(2, lo=1)
    image_size: int = opt(32, lo=0)  # pad the images evenly to this size with background (-1); 0: keep their size
    max_minutes: float = opt(0.0, lo=0.0)  # >0: also stop after this many minutes, whichever first (the cosine then
    # follows the spent fraction of it too); 0: step-driven (the 3,600 default steps took ~15 min on a 2-core CPU)
    limit: int | None = None  # images per dataset and split (tests, smoke runs)
    val_fraction: float = opt(0.1, lo=0.0, lt=1.0)  # of the train split, held out for val/psnr and val/ssim; 0: none
    n_show: int = opt(10, lo=1)  # held-out images in reconstructions.png
    threads: int = 0  # torch CPU threads; 0 keeps torch's default


def main(argv=None):
    setup_logging()
    parser = recipe_parser(__doc__.splitlines()[0], "vae-mini", 3600, "runs/vae")
    parser.add_argument("--data", default=None, help="image-text pairs (open_clip CSV/TSV or image + .txt folder): "
                        "their images, resized to image_size, split as clip_pretrain splits them (default: datasets=)")
    args = parse_args(parser, argv)
    if args.preset not in VAE_PRESETS:
        raise ValueError(f"--preset {args.preset!r}: choose a VAE preset from {sorted(VAE_PRESETS)}")
    routed = split_overrides(args.overrides, vae=set(VAE_PRESETS[args.preset]), train=VAETrain())
    train = VAETrain(**routed["train"])
    if train.threads:
        torch.set_num_threads(train.threads)
    train_images, test_images, content = load_images(args, train)
    size = train.image_size or content
    if size < content:
        raise ValueError(f"image_size={size}: the {content}x{content} images can only be padded, not shrunk")
    images, val_images = split_off(pad_to(train_images, size), train.val_fraction, args.seed)
    test_images = pad_to(test_images, size)
    torch.manual_seed(args.seed)
    vae = build_vae(args.preset, in_channels=images.shape[1], sample_size=size, **routed["vae"])
    disc = PatchDiscriminator(images.shape[1], train.disc_width, train.disc_layers)
    log.info("%s: %d VAE + %d discriminator params, %dx compression, %d train / %d val / %d test images (%d px padded "
             "to %d)", args.preset, sum(p.numel() for p in vae.parameters()), sum(p.numel() for p in disc.parameters()),
             compression(vae), len(images), len(val_images), len(test_images), content, size)
    clock = BudgetClock(train.max_minutes * 60)  # stops at the budget; the cosine follows its fraction too
    task = VAETask(vae, disc, train.lr, kl_weight=train.kl_weight, disc_weight=train.disc_weight,
                   disc_start=train.disc_start, l2_weight=train.l2_weight, warmup_steps=train.warmup_steps,
                   total_steps=args.max_steps, min_lr_ratio=train.min_lr_ratio, betas=(train.beta1, train.beta2),
                   progress=clock.fraction if train.max_minutes > 0 else None)
    loader = resumable_loader(TensorDataset(images), train.batch_size, args.seed)
    hist = LossHistory(args.out, prefixes=("train/loss", "train/l1", "train/d_loss"), title="VAE losses")
    timer = Timer()
    trainer = make_trainer(args, callbacks=[hist, clock], limit_val_batches=0)
    trainer.fit(task, loader, ckpt_path=checkpoint_to_resume(args.resume))
    train_s = timer.elapsed
    if trainer.global_step <= train.disc_start:
        log.warning("the discriminator never switched on: %d VAE steps, disc_start=%d", trainer.global_step,
                    train.disc_start)
    if not trainer.is_global_zero:
        return {}
    vae.to(trainer.strategy.root_device)
    scores, padded = reconstruction_metrics(vae, test_images, crop=content), reconstruction_metrics(vae, test_images)
    metrics = {"test/psnr": scores["psnr"], "test/ssim": scores["ssim"], "test/psnr_padded": padded["psnr"],
               "test/ssim_padded": padded["ssim"], "train/l1": float(trainer.callback_metrics["train/l1"]),
               "train/lr_end": trainer.optimizers[0].param_groups[0]["lr"],  # the cosine's floor at --max-steps
               "steps": trainer.global_step, "train_s": round(train_s, 2), "disc_start": train.disc_start,
               "compression": compression(vae), "latent_channels": vae.config.latent_channels, "image_size": size,
               "split/train": len(images), "split/val": len(val_images), "split/test": len(test_images)}
    if len(val_images):
        val = reconstruction_metrics(vae, val_images, crop=content)
        metrics.update({"val/psnr": val["psnr"], "val/ssim": val["ssim"]})
    show = test_images[torch.randperm(len(test_images), generator=torch.Generator().manual_seed(0))[:train.n_show]]
    save_grid(torch.cat([show, reconstruct(vae.eval(), show)]), 2, f"{args.out}/reconstructions.png",
              ["held-out", "reconstructed"], [""] * len(show),
              f"PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.3f} (all held-out images)")
    return finish(args, vae.cpu(), metrics, timer)


def load_images(args, train: VAETrain) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(train images, held-out test images, their content size) in [-1, 1]: the built-in datasets= (28 px, padded
    to image_size later), or with --data a user's image-text pairs resized to image_size (channels from the
    images: 3 when any is in colour), split by image as recipes/clip_pretrain.py splits them (seed, 20%)."""
    if args.data is None:
        names = tuple(train.datasets.split(","))
        data, test = load_labelled(names, "train", limit=train.limit), load_labelled(names, "test", limit=train.limit)
        return data.images, test.images, data.images.shape[-1]
    if not train.image_size:
        raise ConfigError(f"--data {args.data}: image_size=0 keeps the images' size; give the size to resize to")
    data, test, _ = load_captioned(args.data, train.image_size, seed=args.seed, limit=train.limit)
    return data.images, test.images, train.image_size


def split_off(images: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the rest, a seeded random `fraction` of `images`): the validation images held out of the train split."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n_val = round(len(images) * fraction)
    return images[order[n_val:]], images[order[:n_val]]


if __name__ == "__main__":
    main()
