"""Detection data: canvases of real MNIST-5k digits and animal silhouettes pasted at random positions and scales,
with their tight boxes and classes, split by SOURCE image (a test canvas holds only digits/animals that no training
canvas holds), and box-aware augmentation (torchvision.transforms.v2 on tv_tensors.BoundingBoxes).

Classes: 0-9 the digits (DIGIT_NAMES), 10-19 the animals (ANIMAL_NAMES).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import opt
from ..data.sources import ANIMAL_NAMES, DIGIT_NAMES, load_animals, load_mnist5k

log = logging.getLogger(__name__)
CLASS_NAMES = [f"digit {n}" for n in DIGIT_NAMES] + ANIMAL_NAMES
SPLITS = ("train", "val", "test")


@dataclass
class CanvasConfig:
    size: int = opt(96, lo=32)  # canvas side in pixels
    min_objects: int = opt(1, lo=1)
    max_objects: int = opt(4, lo=1)
    min_scale: int = opt(20, lo=8)  # pasted object side in pixels (the 28x28 source resized)
    max_scale: int = opt(40, lo=8)
    max_iou: float = opt(0.1, lo=0.0, hi=1.0)  # placements overlapping an earlier box more than this are redrawn
    val_fraction: float = opt(0.1, gt=0.0, lt=0.5)  # of the source images, per source
    test_fraction: float = opt(0.1, gt=0.0, lt=0.5)
    n_train: int = opt(20000, lo=1)  # distinct training canvases (index -> seed)
    n_val: int = opt(200, lo=1)
    n_test: int = opt(500, lo=1)

    def __post_init__(self):
        if self.min_objects > self.max_objects or self.min_scale > self.max_scale:
            raise ValueError(f"min_objects/min_scale must not exceed max_objects/max_scale, got objects "
                             f"{self.min_objects}..{self.max_objects}, scale {self.min_scale}..{self.max_scale}")
        if self.max_scale > self.size:
            raise ValueError(f"max_scale={self.max_scale} exceeds the canvas size={self.size}")


@dataclass
class Sources:
    """Source images (N, 28, 28) uint8 with detection classes (N,) and the source id each came from (N,)."""

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray  # "d<i>" / "a<i>": index in MNIST-5k / the animal set

    def select(self, idx: np.ndarray) -> "Sources":
        return Sources(self.images[idx], self.labels[idx], self.ids[idx])


def split_sources(cfg: CanvasConfig, seed: int = 0, digits=None, animals=None) -> dict[str, Sources]:
    """{split: Sources}: each source set permuted by `seed` and cut into test / val / train, so no source image
    is in two splits. `digits`/`animals`: (images, labels) to use instead of the packaged sets (tests)."""
    digits = load_mnist5k() if digits is None else digits
    animals = load_animals() if animals is None else animals
    parts = {s: [] for s in SPLITS}
    for tag, (images, labels), offset in (("d", digits, 0), ("a", animals, len(DIGIT_NAMES))):
        perm = np.random.default_rng(seed).permutation(len(labels))
        n_test, n_val = round(len(perm) * cfg.test_fraction), round(len(perm) * cfg.val_fraction)
        cut = {"test": perm[:n_test], "val": perm[n_test:n_test + n_val], "train": perm[n_test + n_val:]}
        ids = np.array([f"{tag}{i}" for i in range(len(labels))])
        for s in SPLITS:
            parts[s].append(Sources(images[cut[s]], labels[cut[s]] + offset, ids[cut[s]]))
    out = {s: Sources(*(np.concatenate([getattr(p, f) for p in parts[s]]) for f in ("images", "labels", "ids")))
           for s in SPLITS}
    log.info("canvas sources: %s (digits and animals, split by source image)",
             ", ".join(f"{s} {len(out[s].labels)}" for s in SPLITS))
    return out


def _iou(box: np.ndarray, boxes: list) -> float:
    if not boxes:
        return 0.0
    b = np.asarray(boxes, dtype=np.float64)  # (K, 4) xyxy
    w = np.clip(np.minimum(box[2], b[:, 2]) - np.maximum(box[0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], b[:, 3]) - np.maximum(box[1], b[:, 1]), 0, None)
    inter = w * h
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    return float((inter / (area(box) + area(b) - inter)).max())


def _resized(image: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((side, side), Image.BILINEAR))


def tight_box(patch: np.ndarray, x0: int, y0: int, threshold: int = 32) -> np.ndarray:
    """xyxy box (pixel edges) of the patch's pixels >= threshold, placed at (x0, y0)."""
    ys, xs = np.nonzero(patch >= threshold)
    return np.array([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1], dtype=np.float32)


def make_canvas(src: Sources, cfg: CanvasConfig, rng: np.random.Generator):
    """(canvas (S, S) uint8, boxes (K, 4) float32 xyxy, labels (K,) int64, source ids (K,))."""
    canvas = np.zeros((cfg.size, cfg.size), np.uint8)
    boxes, labels, ids = [], [], []
    for _ in range(rng.integers(cfg.min_objects, cfg.max_objects + 1)):
        i = rng.integers(len(src.labels))
        side = int(rng.integers(cfg.min_scale, cfg.max_scale + 1))
        patch = _resized(src.images[i], side)
        if patch.max() < 32:  # a blank source image has no box
            continue
        for _try in range(10):
            x0, y0 = rng.integers(0, cfg.size - side + 1, size=2)
            box = tight_box(patch, x0, y0)
            if _iou(box, boxes) <= cfg.max_iou:
                region = canvas[y0:y0 + side, x0:x0 + side]
                np.maximum(region, patch, out=region)
                boxes.append(box), labels.append(src.labels[i]), ids.append(src.ids[i])
                break
    return (canvas, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64),
            np.asarray(ids))


class Canvases(Dataset):
    """Canvas `i` of a split is drawn from that split's sources with seed (seed, split, i): the same canvases every
    epoch and run. Items: (image (1, S, S) float in [0, 1], {"boxes": (K, 4) xyxy, "labels": (K,)}), after
    `transform` (a v2 transform taking (tv_tensors.Image, {"boxes": BoundingBoxes, "labels"}))."""

    def __init__(self, sources: Sources, cfg: CanvasConfig, n: int, seed: int, split: str, transform=None):
        self.sources, self.cfg, self.n, self.transform = sources, cfg, n, transform
        self.seed = (seed, SPLITS.index(split))

    def __len__(self) -> int:
        return self.n

    def raw(self, i: int):
        return make_canvas(self.sources, self.cfg, np.random.default_rng((*self.seed, i)))

    def __getitem__(self, i: int):
        from torchvision import tv_tensors

        canvas, boxes, labels, _ = self.raw(i)
        image = tv_tensors.Image(torch.from_numpy(canvas).float().div(255).unsqueeze(0))  # (1, S, S)
        target = {"boxes": tv_tensors.BoundingBoxes(torch.from_numpy(boxes), format="XYXY",
                                                    canvas_size=canvas.shape),
                  "labels": torch.from_numpy(labels)}
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image.as_subclass(torch.Tensor), {"boxes": target["boxes"].as_subclass(torch.Tensor),
                                                 "labels": target["labels"]}


def augmentation(size: int, flip: bool = False, translate: float = 0.1, scale=(0.8, 1.2)):
    """A box-aware training chain (torchvision v2): random affine (shift, zoom), optional horizontal flip
    (off by default: a mirrored digit is another glyph), back to `size`, boxes clamped and emptied boxes dropped."""
    from torchvision.transforms import v2

    steps = [v2.RandomAffine(degrees=0, translate=(translate, translate), scale=scale)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [v2.Resize((size, size), antialias=True), v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=2)]
    return v2.Compose(steps)


def collate(batch):
    """A detection batch: (images (B, 1, S, S), list of target dicts)."""
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


def canvas_sets(cfg: CanvasConfig, seed: int = 0, augment: bool = True, sources=None) -> dict[str, Canvases]:
    """{split: Canvases}: training canvases with `augmentation`, val and test as drawn."""
    sources = split_sources(cfg, seed) if sources is None else sources
    n = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    tf = {"train": augmentation(cfg.size) if augment else None}
    return {s: Canvases(sources[s], cfg, n[s], seed, s, tf.get(s)) for s in SPLITS}
