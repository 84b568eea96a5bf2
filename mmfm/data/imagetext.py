"""Image-text webdataset shards from labelled images: captions from varied templates, a test split by image.

Each sample is `<key>.png` (the image), `<key>.txt` (one caption), `<key>.cls` (the class index when known)
and `<key>.json` ({"source", "label", "classname", "captions": every caption written for this image}).
A shard folder also holds `classes.json`: per source, its class names and the zero-shot prompt templates,
so that evaluation works on any shard set without knowing where it came from.
"""
from __future__ import annotations

import io
import json
import logging
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .sources import ANIMAL_NAMES, DIGIT_NAMES, load_animals, load_mnist5k, split_indices

log = logging.getLogger(__name__)
CLASSES_FILE = "classes.json"
BUILD_FILE = "build.json"
FORMAT = 2  # bump when the default shards change: the recipe then rebuilds them


def article(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


@dataclass
class LabelSource:
    """A labelled image set captioned from its class names with templates.

    Training templates take `{name}` (the class name), `{a_name}` (with its article) and `{label}` (a
    short form, e.g. the numeral). Prompt templates are the zero-shot classifier's phrasings; they take
    `{}` and are deliberately worded differently from the training captions.
    """

    name: str
    classnames: list[str]
    short: list[str]
    templates: list[str]
    prompts: list[str]
    loader: object = field(repr=False, default=None)
    train_repeats: int = 1  # write each training image this many times (fresh captions): balances the mix

    def captions(self, label: int) -> list[str]:
        name, short = self.classnames[label], self.short[label]
        return [t.format(name=name, a_name=article(name), label=short) for t in self.templates]


DIGITS = LabelSource(
    "digits", list(DIGIT_NAMES), [str(i) for i in range(10)],
    templates=["a photo of the digit {name}", "a handwritten {label}", "the number {name}",
               "a handwritten digit {name}", "a scan of a handwritten {name}", "the digit {label}",
               "a black and white picture of the number {label}", "{name}, written by hand",
               "a pen drawing of the numeral {name}", "a blurry {label} on a dark background"],
    prompts=["a photo of the number {}.", "an image of a {}.", "a drawing of the number {}.", "the digit {}."],
    loader=load_mnist5k, train_repeats=2,
)
ANIMALS = LabelSource(
    "animals", list(ANIMAL_NAMES), list(ANIMAL_NAMES),
    templates=["a silhouette of {a_name}", "a photo of {a_name}", "the outline of {a_name}",
               "a black shape of {a_name}", "a small picture of {a_name}", "{a_name} seen from the side",
               "a shadow of {a_name}", "an animal: {name}", "a white {name} on black", "a drawing of {a_name}"],
    prompts=["a photo of a {}.", "an image of the {}.", "a picture of the {}.", "a silhouette of the {}."],
    loader=load_animals,
)
DEFAULT_SOURCES = (DIGITS, ANIMALS)


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W) or (H, W, 3) uint8 -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(samples: list[dict], pattern: str, maxcount: int = 1000) -> list[str]:
    """Write ready samples ({"__key__", "png", "txt", ...}) to tar shards; returns the shard paths."""
    import webdataset as wds

    Path(pattern).parent.mkdir(parents=True, exist_ok=True)
    with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0) as sink:
        for s in samples:
            sink.write(s)
        n = sink.shard
    return [pattern % i for i in range(n)]


def label_samples(source: LabelSource, images: np.ndarray, labels: np.ndarray, index: np.ndarray,
                  rng: random.Random, key_suffix: str = "") -> list[dict]:
    """One sample per image index; txt is one caption drawn at random, json lists them all."""
    out = []
    for i in index:
        label = int(labels[i])
        caps = source.captions(label)
        meta = {"source": source.name, "label": label, "classname": source.classnames[label], "captions": caps}
        out.append({"__key__": f"{source.name}{i:06d}{key_suffix}", "png": png_bytes(images[i]),
                    "txt": rng.choice(caps), "cls": label, "json": meta})
    return out


def classes_meta(sources) -> dict:
    return {s.name: {"classnames": s.classnames, "prompts": s.prompts} for s in sources}


def build_label_shards(out_dir: str | Path, sources=DEFAULT_SOURCES, test_fraction: float = 0.2, seed: int = 0,
                       maxcount: int = 1000) -> dict:
    """train-*.tar and test-*.tar under out_dir; the test split is by image (split_indices), per source.

    Returns {"train": [paths], "test": [paths], "counts": {...}}."""
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    train, test, counts = [], [], {}
    for src in sources:
        images, labels = src.loader()
        keep = unique_images(images)  # exact duplicates would otherwise land on both sides of the split
        tr, te = (keep[i] for i in split_indices(len(keep), test_fraction, seed))
        for r in range(src.train_repeats):
            train += label_samples(src, images, labels, tr, rng, key_suffix=f"r{r}" if r else "")
        test += label_samples(src, images, labels, te, rng)
        counts[src.name] = {"train": len(tr), "test": len(te), "train_repeats": src.train_repeats,
                            "duplicates_dropped": len(images) - len(keep)}
        log.info("%s: %d train / %d test images (%d exact duplicates dropped)", src.name, len(tr), len(te),
                 len(images) - len(keep))
    rng.shuffle(train)  # mix the sources inside every shard
    stage = out_dir.parent / f".{out_dir.name}.building-{os.getpid()}"
    n_train = len(write_shards(train, str(stage / "train-%06d.tar"), maxcount))
    n_test = len(write_shards(test, str(stage / "test-%06d.tar"), maxcount))
    update_classes_file(stage, classes_meta(sources))
    (stage / BUILD_FILE).write_text(json.dumps({"format": FORMAT, "counts": counts}, indent=2))
    swap_in(stage, out_dir)
    return {"train": [str(out_dir / f"train-{i:06d}.tar") for i in range(n_train)],
            "test": [str(out_dir / f"test-{i:06d}.tar") for i in range(n_test)], "counts": counts}


def swap_in(stage: Path, out_dir: Path) -> None:
    """Replace out_dir by the finished stage folder with two renames: a reader never sees half-written shards
    (files it already opened stay readable after the old folder is removed)."""
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(stage, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def unique_images(images: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of every distinct image, in order."""
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    return np.sort(first)


def update_classes_file(out_dir: Path, meta: dict) -> Path:
    """Merge per-source class names and prompts into <out_dir>/classes.json."""
    path = Path(out_dir) / CLASSES_FILE
    old = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**old, **meta}, indent=2))
    return path


def read_classes(shard_dir: str | Path) -> dict:
    """{source: {"classnames": [...], "prompts": [...]}} from a shard folder's classes.json ({} if none)."""
    path = Path(shard_dir) / CLASSES_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def default_shards_ready(out_dir: str | Path) -> bool:
    """True when out_dir holds shards written by this version of build_label_shards."""
    d = Path(out_dir)
    try:
        fmt = json.loads((d / BUILD_FILE).read_text()).get("format")
    except (OSError, ValueError):
        return False
    return fmt == FORMAT and any(d.glob("train-*.tar")) and any(d.glob("test-*.tar"))
