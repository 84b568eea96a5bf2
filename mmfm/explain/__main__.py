"""python -m mmfm.explain MODEL_DIR IMAGE [IMAGE ...] --method gradcam|rollout --out PNG [--target CLASS]

MODEL_DIR: a saved image classifier (recipes/finetune.py's <out>/model: an mmfm ViT or a timm network with its
task head). IMAGE: a PNG/JPEG/..., a DICOM file, a NIfTI volume (its middle axial slice) or a .npy array; it goes
through the same chain as fine-tuning (mmfm.adapt.data.to_backbone_input). Writes an overlay PNG (image and map)
and logs the explained class."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("mmfm.explain")


def load_image(path: str | Path) -> np.ndarray:
    """One 2-D image (H, W) or (H, W, C) as uint8 or float in [0, 1] (mmfm.data.labelled's readers)."""
    from ..data.labelled import read_image_file
    from ..data.pixels import PixelScale

    frames, windowed = read_image_file(path)
    image = frames[len(frames) // 2]  # a volume: its middle slice
    return PixelScale.fit([image], [windowed], path).apply(image, windowed, path)


def main(argv=None):
    from .. import build_model
    from ..adapt.data import pixel_stats, to_backbone_input
    from .maps import METHODS, explain
    from .overlay import display_image, save_overlays

    p = argparse.ArgumentParser(prog="python -m mmfm.explain", description=__doc__.splitlines()[0])
    p.add_argument("model", help="a saved classifier folder (config.json + model.safetensors)")
    p.add_argument("images", nargs="+", help="image files (PNG/JPEG, DICOM, NIfTI, .npy)")
    p.add_argument("--method", default="gradcam", choices=METHODS)
    p.add_argument("--out", default="explain.png", help="the overlay PNG to write")
    p.add_argument("--target", type=int, default=None, help="class to explain (gradcam; default: the predicted one)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (Path(a.model) / "config.json").is_file():
        p.error(f"MODEL_DIR {a.model}: no config.json (a folder written by save_pretrained, e.g. <finetune out>/model)")
    model = build_model(a.model).eval()
    cfg = model.config
    stats = pixel_stats(cfg)
    x = torch.cat([to_backbone_input(load_image(f)[None], cfg.img_size, cfg.in_chans, *stats) for f in a.images])
    if a.method == "rollout" and a.target is not None:
        p.error("--target applies to --method gradcam (rollout explains no particular class)")
    maps = explain(model, x, a.method, a.target)
    with torch.no_grad():
        logits = model(x)
    titles = [f"{Path(f).name}: class {int(c)}" for f, c in zip(a.images, _classes(logits, a.target))]
    out = save_overlays([display_image(img, *stats) for img in x], list(maps), titles, a.out,
                        f"{a.method} on {Path(a.model).name}")
    log.info("wrote %s (%s, classes %s)", out, a.method, titles)
    return out


def _classes(logits: torch.Tensor, target) -> list[int]:
    if target is not None:
        return [target] * len(logits)
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).long().tolist()
    return logits.argmax(1).tolist()


if __name__ == "__main__":
    main()
