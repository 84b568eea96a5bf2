"""Visual question answering on real pixels: canvases of 2 x 2 cells, each cell a real MNIST-5k digit, a real
animal silhouette or empty, with questions generated from the cell labels and one-word answers.

Question types (`TYPES`): what is in a cell, how many digits / animals, whether a class is present, which cell
holds a class (asked only when exactly one cell does), and what is left of / above an object. Canvases are split
by SOURCE image (mmfm.detect.canvas.split_sources): no test digit or animal is in a training canvas.

    sets = vqa_sets(VQAConfig())        # {"train", "val", "test"}: Datasets of VQAExample
    ex = sets["train"][0]               # ex.image (1, 56, 56) uint8, ex.question, ex.answer, ex.type
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..config import opt
from ..detect.canvas import CanvasConfig, Sources, split_sources
from .sources import ANIMAL_NAMES, DIGIT_NAMES

NAMES = DIGIT_NAMES + ANIMAL_NAMES  # class c: a digit for c < 10, an animal after
CELLS = ["top-left", "top-right", "bottom-left", "bottom-right"]  # cell k at row k // 2, column k % 2
TYPES = ("what", "count", "exists", "where", "relation")
EMPTY = -1


@dataclass
class VQAConfig:
    cell: int = opt(28, lo=8)  # cell side in pixels (the 28x28 sources, resized when different)
    p_empty: float = opt(0.25, lo=0.0, lt=1.0)  # chance that a cell is empty
    p_animal: float = opt(0.5, lo=0.0, hi=1.0)  # chance that a filled cell holds an animal (else a digit)
    questions: int = opt(3, lo=1)  # questions per canvas
    n_train: int = opt(20000, lo=1)  # canvases (index -> seed)
    n_val: int = opt(300, lo=1)
    n_test: int = opt(1000, lo=1)
    val_fraction: float = opt(0.1, gt=0.0, lt=0.5)  # of the source images
    test_fraction: float = opt(0.1, gt=0.0, lt=0.5)

    @property
    def size(self) -> int:
        return 2 * self.cell


@dataclass
class VQAExample:
    image: torch.Tensor  # (1, size, size) uint8
    question: str
    answer: str
    type: str
    canvas: int  # index of the canvas in its split


def draw_cells(src: Sources, cfg: VQAConfig, rng: np.random.Generator) -> tuple[np.ndarray, list[int], list[str]]:
    """A canvas (size, size) uint8, its 4 cell classes (EMPTY for none) and the source ids it used."""
    digit = np.flatnonzero(src.labels < len(DIGIT_NAMES))
    animal = np.flatnonzero(src.labels >= len(DIGIT_NAMES))
    canvas = np.zeros((cfg.size, cfg.size), np.uint8)
    labels, used = [], []
    for k in range(4):
        if rng.random() < cfg.p_empty:
            labels.append(EMPTY)
            continue
        pool = animal if rng.random() < cfg.p_animal else digit
        i = int(pool[rng.integers(len(pool))])
        image = src.images[i]
        if image.shape[0] != cfg.cell:
            image = np.asarray(torch.nn.functional.interpolate(
                torch.as_tensor(image, dtype=torch.float32)[None, None], size=(cfg.cell, cfg.cell), mode="bilinear",
                align_corners=False)[0, 0].clamp(0, 255).round().to(torch.uint8))  # (1, 1, c, c) -> (c, c)
        r, c = divmod(k, 2)
        canvas[r * cfg.cell:(r + 1) * cfg.cell, c * cfg.cell:(c + 1) * cfg.cell] = image
        labels.append(int(src.labels[i]))
        used.append(str(src.ids[i]))
    return canvas, labels, used


def _article(name: str) -> str:
    return f"an {name}" if name in ("eight", "elephant") else f"a {name}"  # "a one", "an eight", "an elephant"


def ask(labels: list[int], kind: str, rng: np.random.Generator) -> tuple[str, str]:
    """One (question, answer) of type `kind` about a canvas whose cells hold `labels`."""
    present = [lab for lab in labels if lab != EMPTY]
    if kind == "what":
        k = int(rng.integers(4))
        return f"what is in the {CELLS[k]} cell?", NAMES[labels[k]] if labels[k] != EMPTY else "nothing"
    if kind == "count":
        animals = bool(rng.integers(2))
        n = sum((lab >= len(DIGIT_NAMES)) == animals for lab in present)
        return f"how many {'animals' if animals else 'digits'} are there?", DIGIT_NAMES[n]
    if kind == "exists":
        c = int(rng.choice(present)) if present and rng.random() < 0.5 else int(rng.integers(len(NAMES)))
        return f"is there {_article(NAMES[c])}?", "yes" if c in labels else "no"
    if kind == "where":
        once = [lab for lab in present if labels.count(lab) == 1]
        if not once:
            return ask(labels, "count", rng)
        c = int(rng.choice(once))
        return f"where is the {NAMES[c]}?", CELLS[labels.index(c)]
    # relation: the object whose cell is left of / above a uniquely placed object
    pairs = [(k, side) for k in range(4) if labels[k] != EMPTY and labels.count(labels[k]) == 1
             for side in ("left of", "above") if (k % 2 == 1 if side == "left of" else k >= 2)]
    if not pairs:
        return ask(labels, "what", rng)
    k, side = pairs[int(rng.integers(len(pairs)))]
    other = k - 1 if side == "left of" else k - 2
    answer = NAMES[labels[other]] if labels[other] != EMPTY else "nothing"
    return f"what is {side} the {NAMES[labels[k]]}?", answer


class VQASet(Dataset):
    """`n` canvases drawn from `src` (canvas i from the generator seeded by (seed, i)), `questions` each; item j
    is question j % questions of canvas j // questions. Asking falls back to another type where a type has no
    valid question on a canvas (no unique object): the example's `type` is the one asked."""

    def __init__(self, src: Sources, cfg: VQAConfig, n: int, seed: int):
        self.src, self.cfg, self.n, self.seed = src, cfg, n, seed

    def __len__(self) -> int:
        return self.n * self.cfg.questions

    def canvas(self, i: int) -> tuple[np.ndarray, list[int], list[str], np.random.Generator]:
        rng = np.random.default_rng((self.seed, i))
        return (*draw_cells(self.src, self.cfg, rng), rng)

    def __getitem__(self, j: int) -> VQAExample:
        i, q = divmod(j, self.cfg.questions)
        image, labels, _, rng = self.canvas(i)
        for _ in range(q + 1):  # the q-th question of this canvas (the same draws every time)
            kind = TYPES[int(rng.integers(len(TYPES)))]
            question, answer = ask(labels, kind, rng)
        asked = _type_of(question)
        return VQAExample(torch.from_numpy(image)[None], question, answer, asked, i)


def _type_of(question: str) -> str:
    if question.startswith("how many"):
        return "count"
    if question.startswith("is there"):
        return "exists"
    if question.startswith("where"):
        return "where"
    return "what" if question.startswith("what is in") else "relation"


def vqa_sets(cfg: VQAConfig = VQAConfig(), seed: int = 0, digits=None, animals=None) -> dict[str, VQASet]:
    """{"train", "val", "test"}: question sets whose canvases use disjoint source images. `digits`/`animals`:
    (images, labels) to use instead of the packaged sets (tests)."""
    canvas_cfg = CanvasConfig(val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction)
    sources = split_sources(canvas_cfg, seed, digits, animals)
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    return {s: VQASet(sources[s], cfg, sizes[s], seed=seed * 1000 + k) for k, s in enumerate(sizes)}
