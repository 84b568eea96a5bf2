"""Captioned images for a VLM from a user's image-text pairs: an open_clip CSV/TSV (filepath,title) or a folder
of images with a same-named .txt caption beside each, read by mmfm.data.pairs and split exactly as the CLIP
recipe splits them (split_pairs: by image content, seed and test_fraction 0.2).

    sets = caption_pair_sets("data/emoji_clipart/pairs.csv", img_size=32, in_chans=3, n_test=500, n_val=100)
    ex = sets["test"][0]   # ex.image (3, 32, 32) uint8, ex.question (the prompt), ex.answer (one caption),
                           # ex.captions (every caption of this image: the references), ex.source, ex.label

The same structure as mmfm.data.captions.caption_sets ({"train", "val", "test"} CaptionSets of CaptionExamples),
so the VLM's collate, evaluation, caption grid and metrics are shared. One sample per distinct image (rows whose
image files are byte-identical are one image): a training read draws one of its captions afresh, a held-out
image's references are all of its captions. Images are read once: converted to `in_chans` (RGBA flattened on
white) and resized and centre-cropped to `img_size` (mmfm.data.webdata's ConvertMode and torchvision).

`caption_pair_data(train, preset, routed, seed)` is recipes/vlm_train.py's entry for caption_data that is not the
CLIP shards (is_shard_data): the model's in_chans taken from the images (a saved model whose channels differ is
refused), and the tower pre-training skipped (it needs a class for every image, and grayscale images).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..config import ConfigError
from ..registry import read_config
from .captions import CaptionSet, hold_out, subsample
from .formats import fingerprint
from .pairs import CsvKeys, PairSet, detect_pairs, split_pairs

log = logging.getLogger(__name__)
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


class PairCaptionSet(CaptionSet):
    """A CaptionSet whose samples hold (C, H, W) images (CaptionSet's are (H, W) and get a channel axis)."""

    def __getitem__(self, i: int):
        ex = super().__getitem__(i)
        ex.image = ex.image[0]  # (1, C, H, W) -> (C, H, W)
        return ex


def is_shard_data(path: str | Path) -> bool:
    """The CLIP shards' layout (a folder of train-*.tar and test-*.tar, or the default data/clip, built when
    missing); everything else is read as image-text pairs."""
    p = Path(path)
    return p == Path("data/clip") or (p.is_dir() and any(p.glob("train-*.tar")))


def image_channels(paths: list[str]) -> int:
    """3 when any image is in colour (a mode other than grayscale), else 1; reads the headers only."""
    from PIL import Image

    for p in paths:
        with Image.open(p) as im:
            if im.mode not in GRAY_MODES:
                return 3
    return 1


def load_image(path: str, size: int, in_chans: int) -> np.ndarray:
    """One image as (C, size, size) uint8: converted, resized (shorter side) and centre-cropped."""
    from PIL import Image
    from torchvision import transforms as T

    from .webdata import ConvertMode

    with Image.open(path) as im:
        im.load()
        out = T.CenterCrop(size)(T.Resize(size, antialias=True)(ConvertMode("L" if in_chans == 1 else "RGB")(im)))
    pixels = np.asarray(out, dtype=np.uint8)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (H, W, C) -> (C, H, W)


def image_samples(pairs: PairSet, size: int, in_chans: int) -> list[dict]:
    """One sample per distinct image (by file content, as split_pairs groups them), in first-row order:
    {"key" (content hash), "path", "image" (C, H, W) uint8, "txt" (its first caption), "captions" (all, unique),
    "source", "label"}."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs.paths):
        groups.setdefault(fingerprint(Path(p).read_bytes()), []).append(i)
    samples = []
    for key, rows in groups.items():
        first = rows[0]
        captions = list(dict.fromkeys(pairs.captions[i] for i in rows))
        samples.append({"key": key, "path": pairs.paths[first], "image": load_image(pairs.paths[first], size, in_chans),
                        "txt": captions[0], "captions": captions, "source": pairs.sources[first],
                        "label": pairs.labels[first]})
    return samples


def read_pairs(path: str | Path, keys: CsvKeys = CsvKeys()) -> PairSet:
    """A CSV/TSV or caption folder as a PairSet (mmfm.data.pairs.detect_pairs); shard patterns are refused."""
    pairs = detect_pairs(path, keys, what="caption_data")
    if not isinstance(pairs, PairSet):
        raise ConfigError(f"caption_data={path}: webdataset shards are a stream; the caption task reads the CLIP "
                          "shards' folder (train-*.tar + test-*.tar), an open_clip CSV/TSV or an image + .txt folder")
    return pairs


def caption_pair_sets(data: str | Path | PairSet, img_size: int, in_chans: int, n_test: int = 500, seed: int = 0,
                      n_val: int = 0, test_fraction: float = 0.2) -> dict:
    """{"train", "val", "test"} CaptionSets of a CSV/TSV or caption folder (or its PairSet): split_pairs' split
    by image (seed, test_fraction: the CLIP recipe's defaults, so a CLIP trained on the same file never saw the
    test images), then n_val training images held out as val and a seeded n_test of the test images (0: all)."""
    pairs = data if isinstance(data, PairSet) else read_pairs(data)
    path = pairs.root if isinstance(data, PairSet) else data
    train, test, sizes = split_pairs(pairs, test_fraction, seed)
    if not len(test):
        raise ConfigError(f"caption_data={path}: {sizes['train_images']} image(s) leave none for the test split")
    train_samples, test_samples = image_samples(train, img_size, in_chans), image_samples(test, img_size, in_chans)
    test_samples = subsample(test_samples, n_test, seed)
    train_samples, val_samples = hold_out(train_samples, n_val, seed) if n_val else (train_samples, [])
    sets = {"train": PairCaptionSet(train_samples, train=True, seed=seed), "val": PairCaptionSet(val_samples, False),
            "test": PairCaptionSet(test_samples, False)}
    log.info("captions from %s (%s): %d train / %d val / %d test images (%d x %d, %d channel(s)); split by image "
             "with seed %d: %d rows share an image, %d duplicate rows dropped", path, pairs.format, len(train_samples),
             len(val_samples), len(test_samples), img_size, img_size, in_chans, seed,
             sizes["rows_sharing_an_image"], sizes["duplicates_dropped"])
    return sets


def model_image_settings(preset: str, overrides: dict, channels: int, path) -> tuple[int, int]:
    """(img_size, in_chans) for pair data: img_size from the overrides, else the preset's or saved model's;
    in_chans from the overrides, else a saved model's (refused when it differs from the images' channels), else
    the images'."""
    import mmfm

    saved = (Path(preset) / "config.json").is_file()
    cfg = read_config(Path(preset)) if saved else mmfm.get_config(preset)
    size = int(overrides.get("img_size", cfg.img_size))
    if "in_chans" in overrides:
        return size, int(overrides["in_chans"])
    if saved and cfg.in_chans != channels:
        raise ConfigError(f"--preset {preset}: the saved model takes in_chans={cfg.in_chans} image channel(s) but "
                          f"caption_data={path} holds {'colour (3)' if channels == 3 else 'grayscale (1)'} images; "
                          "use a model trained on such images (or in_chans= to convert them)")
    return size, cfg.in_chans if saved else channels


def caption_pair_data(train, preset: str, routed: dict, seed: int) -> dict:
    """recipes/vlm_train.py task=caption on image-text pairs (`train`: its VLMTrain; the CLIP shards go through
    caption_sets): the sets, with the model's in_chans and img_size set in routed["model"] from the data. The
    tower pre-training does not apply: tower_steps= given explicitly is refused, the default is skipped (logged),
    and the tower then trains with the VLM unless freeze_tower= or tower_lora= is given."""
    if train.tower_steps and not train.tower:
        why = ("needs a class label for every image and grayscale images (the shards' digits and animals); "
               f"caption_data={train.caption_data} is image-text pairs")
        if "tower_steps" in routed["train"]:
            raise ConfigError(f"tower_steps={train.tower_steps}: the tower pre-training {why}: set tower_steps=0 "
                              "(or tower=PATH, a saved ViT folder)")
        log.info("tower pre-training skipped: it %s", why)
        train.tower_steps = 0
    if not train.tower and not train.tower_lora and "freeze_tower" not in routed["train"]:
        train.freeze_tower = False  # no pre-trained tower to keep: it learns with the VLM
        log.info("the image tower trains with the VLM (freeze_tower=false; no pre-trained tower)")
    pairs = read_pairs(train.caption_data)
    size, in_chans = model_image_settings(preset, routed["model"], image_channels(pairs.paths), train.caption_data)
    routed["model"].update(img_size=size, in_chans=in_chans)
    return caption_pair_sets(pairs, size, in_chans, n_test=train.n_caption_test, seed=seed,
                             n_val=train.n_caption_val)
