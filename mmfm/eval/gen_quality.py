"""Generation quality without any download: an independent classifier (recipes/vit_classify.py) labels
generated images (conditional accuracy), and its pooled features give a Frechet distance
(torchmetrics' FrechetInceptionDistance with a custom feature extractor). The real-vs-real distance between
two halves of held-out images is the floor the generated distance should be read against.

    python -m mmfm.eval.gen_quality --model runs/dit/model --classifier runs/vit/model --scales 1,2,3,4,6
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch
import torch.nn as nn

log = logging.getLogger(__name__)


class ClassifierFeatures(nn.Module):
    """A ViT classifier's pooled, pre-head features as an FID feature extractor: (B, C, H, W) -> (B, dim)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = classifier.config.dim

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        c = self.classifier
        return c.pool(c.forward_features(images.to(next(c.parameters()).device))).double()  # (B, dim)


def frechet_distance(features: nn.Module, real: torch.Tensor, fake: torch.Tensor, batch_size: int = 500) -> float:
    """FID between two image sets in `features`' space (torchmetrics, custom feature extractor); the metric's
    running sums live on the device of `features`' parameters, where the features are computed."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    device = next(features.parameters()).device
    fid = FrechetInceptionDistance(feature=features, normalize=True).to(device)
    for imgs, is_real in ((real, True), (fake, False)):
        for i in range(0, len(imgs), batch_size):
            fid.update(imgs[i:i + batch_size], real=is_real)
    return float(fid.compute())


def fid_floor(features: nn.Module, real: torch.Tensor, seed: int = 0) -> tuple[float, torch.Tensor]:
    """FID between two random halves of `real`; also returns the first half (the reference set)."""
    perm = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))
    a, b = real[perm[: len(real) // 2]], real[perm[len(real) // 2: 2 * (len(real) // 2)]]
    return frechet_distance(features, a, b), a


@torch.no_grad()
def generate(model, scheduler, labels: torch.Tensor, guidance_scale: float, steps: int, batch_size: int = 250,
             seed: int = 0, cond_fn=None) -> torch.Tensor:
    """Samples for each label (cond_fn(labels) -> condition dict; class labels by default), in batches, on the
    model's device; the initial noise comes from a CPU generator seeded with `seed` (the same images on any
    device). Returned on the CPU."""
    from ..diffusion import sample

    cfg = model.config
    cond_fn = cond_fn or (lambda y: {"y": y})
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(labels), batch_size):
        y = labels[i:i + batch_size].to(device)
        cond = {k: v.to(device) for k, v in cond_fn(y).items()}
        out.append(sample(model, scheduler, (len(y), cfg.in_channels, cfg.input_size, cfg.input_size), cond,
                          guidance_scale, steps, generator=gen).cpu())
    return torch.cat(out)


def conditional_accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    from ..train.classify import predict

    return (predict(classifier, images).argmax(-1) == labels).float().mean().item()


def evaluate(model, scheduler, classifier, test, guidance_scale: float, steps: int = 20, seed: int = 0,
             cond_fn=None, floors: dict | None = None, keep: dict | None = None, decode=None) -> dict:
    """`evaluate_samples` of a diffusion model: its guided samples for each label (see `generate`), passed
    through `decode` when given (a latent model's VAE decoder, mmfm.diffusion.latent)."""

    def make(labels):
        fake = generate(model, scheduler, labels, guidance_scale, steps, seed=seed, cond_fn=cond_fn)
        return fake if decode is None else decode(fake)

    return evaluate_samples(make, classifier, test, seed, floors, keep, tag=f"guidance {guidance_scale:.2f}")


def evaluate_samples(make, classifier, test, seed: int = 0, floors: dict | None = None, keep: dict | None = None,
                     tag: str = "") -> dict:
    """For each dataset in `test` (a LabelledImages held-out split): `make(labels)` generates as many images as
    half its held-out set with the same class mix, then cond_accuracy/<ds>, fid/<ds> (vs one half) and
    fid_floor/<ds> (half vs half). Any generator is scored alike: diffusion (`evaluate`) or a GAN. `floors`
    caches {ds: (floor, reference half)} across calls; `keep` (a dict), if given, receives {ds: (generated
    images, their labels)}."""
    features = ClassifierFeatures(classifier)
    floors = {} if floors is None else floors
    out = {}
    for name in test.datasets:
        part = test.of(name)
        if name not in floors:
            floors[name] = fid_floor(features, part.images, seed)
        floor, ref = floors[name]
        labels = part.labels[torch.randperm(len(part.labels), generator=torch.Generator().manual_seed(seed))][:len(ref)]
        fake = make(labels)
        if keep is not None:
            keep[name] = (fake, labels)
        out[f"cond_accuracy/{name}"] = conditional_accuracy(classifier, fake, labels)
        out[f"fid/{name}"] = frechet_distance(features, ref, fake)
        out[f"fid_floor/{name}"] = floor
        log.info("%s %s: accuracy %.3f fid %.2f (floor %.2f)", tag, name, out[f"cond_accuracy/{name}"],
                 out[f"fid/{name}"], floor)
    return out


def plot_sweep(rows: list[dict], path: str | Path, datasets) -> Path:
    """FID (left axis, log) and conditional accuracy (right axis) against guidance scale, one colour per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [r["guidance_scale"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax2 = ax.twinx()
    for name, color in zip(datasets, ("tab:blue", "tab:orange", "tab:green")):
        ax.plot(scales, [r[f"fid/{name}"] for r in rows], "o-", color=color, label=f"FID {name}")
        ax.axhline(rows[0][f"fid_floor/{name}"], color=color, ls=":", lw=1, label=f"FID floor {name}")
        ax2.plot(scales, [r[f"cond_accuracy/{name}"] for r in rows], "s--", color=color, label=f"accuracy {name}")
    ax.set_yscale("log")
    ax.set_xlabel("guidance scale")
    ax.set_ylabel("FID (classifier features)")
    ax2.set_ylabel("conditional accuracy")
    ax2.set_ylim(0, 1)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="center right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def guidance_sweep(model, scheduler, classifier, test, scales, steps: int = 20, seed: int = 0,
                   cond_fn=None) -> list[dict]:
    floors: dict = {}
    return [{"guidance_scale": s, **evaluate(model, scheduler, classifier, test, s, steps, seed, cond_fn, floors)}
            for s in scales]


def main(argv=None):
    import mmfm
    from ..diffusion import load_scheduler_config, make_sampler
    from ..train.classify import load_labelled
    from ..train.recipe import setup_logging

    p = argparse.ArgumentParser(description="guidance sweep: FID and conditional accuracy of a class-conditional DiT")
    p.add_argument("--model", default="runs/dit/model")
    p.add_argument("--classifier", default="runs/vit/model")
    p.add_argument("--datasets", default="digits,animals")
    p.add_argument("--scales", default="1,1.5,2,3,4,6")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="dpm++")
    p.add_argument("--limit", type=int, default=None, help="held-out images per dataset (halves: reference/floor)")
    p.add_argument("--split", default="test", choices=("test", "train"),
                   help="the reference images and label mix: the held-out test split, or (to choose settings "
                        "without touching test) the training split")
    p.add_argument("--seed", type=int, default=0, help="the samples' noise and the reference halves")
    p.add_argument("--plot", default=None, help="the FID/accuracy plot (default: guidance_sweep.png beside the "
                   "--json rows); earlier rounds wrote docs/img/dit_guidance.png")
    p.add_argument("--json", default=None, help="where to write the rows (default: beside --model)")
    a = p.parse_args(argv)
    setup_logging()
    model, classifier = mmfm.build_model(a.model).eval(), mmfm.build_model(a.classifier).eval()
    scheduler = make_sampler(a.sampler, load_scheduler_config(a.model))
    test = load_labelled(tuple(a.datasets.split(",")), a.split, limit=a.limit)
    rows = guidance_sweep(model, scheduler, classifier, test, [float(s) for s in a.scales.split(",")], a.steps, a.seed)
    out = Path(a.json or Path(a.model).parent / "guidance_sweep.json")
    out.write_text(json.dumps(rows, indent=2))
    log.info("wrote %s and %s", out, plot_sweep(rows, a.plot or out.with_suffix(".png"), test.datasets))
    return rows


if __name__ == "__main__":
    main()
