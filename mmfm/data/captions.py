"""Captioned images for a VLM: the CLIP shards' digits and animals (mmfm.data.imagetext), same split as CLIP.

    sets = caption_sets("data/clip", n_test=500, n_val=500)   # {"train", "val", "test"}: CaptionSets
    ex = sets["train"][0]     # ex.image (1, 28, 28) uint8, ex.question (the fixed prompt), ex.answer (a caption),
                              # ex.captions (every caption written for the image: the references), ex.source

The training split is the shards' train-*.tar and the test split their test-*.tar, which build_label_shards
splits by image: no test image is in training. `n_val` training images (with their repeats) are held out of
training as a val split, for choosing settings off the test images. A training item draws one of its image's
captions afresh each time it is read (as the CLIP recipe's random_caption), so the model sees every phrasing; a
test item carries the sample's own caption as `answer` and all of them as `captions` (the references of BLEU and ROUGE).
"""
from __future__ import annotations

import io
import json
import logging
import random
import re
import string
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..tokenizers import CharTokenizer
from .imagetext import build_label_shards, default_shards_ready

log = logging.getLogger(__name__)
PROMPT = "caption:"  # the text that asks for a caption; the caption follows it after a space


def caption_tokenizer(kind: str = "char", train_set=None, vocab_size: int = 512):
    """kind="char": characters of the prompt and every caption (lowercase letters, digits, space and ",:.-'?").
    kind="bpe": a byte-level BPE trained on `train_set`'s captions (each after the prompt, and alone), as
    mmfm.train.vlm.vqa_tokenizer trains one on the VQA questions."""
    if kind == "char":
        return CharTokenizer(string.ascii_lowercase + string.digits + " ,:.-'?")
    if kind != "bpe" or train_set is None:
        raise ValueError(f"tokenizer={kind!r}: choose 'char', or 'bpe' with the training set")
    from ..train.vlm import vqa_tokenizer

    captions = sorted({c for s in train_set.samples for c in s["captions"]})
    return vqa_tokenizer("bpe", [f"{PROMPT} {c}" for c in captions] + captions, vocab_size)


@dataclass
class CaptionExample:
    image: torch.Tensor  # (1, H, W) uint8
    question: str  # the prompt (QACollate's field name)
    answer: str  # one caption: the target
    captions: list[str]  # every caption of this image
    source: str  # "digits", "animals"
    label: int


def read_shards(paths: list[str]) -> list[dict]:
    """Every sample of tar shards as {"image" (H, W) uint8, "txt", "captions", "source", "label"}, in order."""
    out = []
    for path in paths:
        parts: dict[str, dict] = {}
        with tarfile.open(path) as tar:
            for m in tar:
                if m.isfile():
                    key, ext = m.name.split(".", 1)
                    parts.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for key, p in parts.items():
            meta = json.loads(p["json"]) if "json" in p else {}
            txt = p["txt"].decode().strip()
            out.append({"key": key, "image": np.asarray(Image.open(io.BytesIO(p["png"])).convert("L")), "txt": txt,
                        "captions": meta.get("captions") or [txt], "source": meta.get("source", ""),
                        "label": int(meta.get("label", -1))})
    return out


class CaptionSet(torch.utils.data.Dataset):
    """Samples as CaptionExamples; train=True draws a fresh caption of the image on every read."""

    def __init__(self, samples: list[dict], train: bool, seed: int = 0):
        self.samples, self.train, self.seed = samples, train, seed
        self.reads = np.zeros(len(samples), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> CaptionExample:
        s = self.samples[i]
        caption = s["txt"]
        if self.train:
            caption = random.Random(f"{self.seed}:{i}:{self.reads[i]}").choice(s["captions"])
            self.reads[i] += 1
        return CaptionExample(torch.from_numpy(s["image"].copy())[None], PROMPT, caption, s["captions"],
                              s["source"], s["label"])


def image_key(sample: dict) -> str:
    """The image's key: a training repeat ("<key>r1") shares its original's."""
    return re.sub(r"(\d{6})r\d+$", r"\1", sample["key"])


def class_sources(dataset, shard_dir: str | Path | None = None):
    """The distinct images of a CaptionSet as a classification set, mmfm.detect.canvas.Sources (images (N, H, W)
    uint8, labels (N,), ids: image keys): the class is the shard's label offset by its source's place in the
    folder's classes.json (digits 0-9, then animals 10-19 for the default shards; a source missing there comes
    after, sized by its largest label); -> (Sources, class count)."""
    from ..detect.canvas import Sources
    from .imagetext import read_classes

    known = read_classes(shard_dir) if shard_dir else {}
    order = list(known) + sorted({s["source"] for s in dataset.samples} - set(known))
    sizes = {src: len(known[src]["classnames"]) if src in known else
             1 + max([s["label"] for s in dataset.samples if s["source"] == src], default=-1) for src in order}
    offsets = {src: sum(sizes[o] for o in order[:k]) for k, src in enumerate(order)}
    firsts = {}
    for s in dataset.samples:
        firsts.setdefault(image_key(s), s)
    keep = list(firsts.values())
    if any(s["label"] < 0 for s in keep):
        raise ValueError("the caption shards carry no class labels (<key>.json 'label'): no tower pre-training")
    labels = np.array([offsets[s["source"]] + s["label"] for s in keep])
    return Sources(np.stack([s["image"] for s in keep]), labels, np.array(list(firsts))), sum(sizes.values())


def subsample(samples: list, n: int, seed: int) -> list:
    """A seeded random n of `samples`, in their order (all of them when n is 0 or not smaller)."""
    if not n or n >= len(samples):
        return samples
    return [samples[i] for i in sorted(random.Random(seed).sample(range(len(samples)), n))]


def hold_out(samples: list[dict], n_val: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(training samples, val samples): a seeded n_val of the distinct images, every repeat of each, held out."""
    keys = sorted({image_key(s) for s in samples})
    if n_val >= len(keys):
        raise ValueError(f"n_caption_val={n_val}: the training split has only {len(keys)} images")
    val = set(random.Random(f"val:{seed}").sample(keys, n_val))
    return [s for s in samples if image_key(s) not in val], [s for s in samples
                                                              if image_key(s) in val and image_key(s) == s["key"]]


def caption_sets(shard_dir: str | Path = "data/clip", n_test: int = 500, seed: int = 0, n_val: int = 0) -> dict:
    """{"train": CaptionSet of train-*.tar, "val": n_val of its images held out (scored as the test is),
    "test": a seeded random n_test of test-*.tar (0: all)}; the default shards are built when missing, as the
    CLIP recipe does."""
    d = Path(shard_dir)
    if d == Path("data/clip") and not default_shards_ready(d):
        log.info("building the default shards under %s (MNIST-5k + animal silhouettes)", d)
        build_label_shards(d)
    train, test = sorted(map(str, d.glob("train-*.tar"))), sorted(map(str, d.glob("test-*.tar")))
    if not train or not test:
        raise FileNotFoundError(f"{d} holds no train-*.tar and test-*.tar shards (mmfm.data.imagetext writes them)")
    test_samples = read_shards(test)
    test_samples = subsample(test_samples, n_test, seed)
    train_samples, val_samples = hold_out(read_shards(train), n_val, seed) if n_val else (read_shards(train), [])
    sets = {"train": CaptionSet(train_samples, train=True, seed=seed), "val": CaptionSet(val_samples, False),
            "test": CaptionSet(test_samples, False)}
    log.info("captions from %s: %d train / %d val / %d test samples", d, len(sets["train"]), len(sets["val"]),
             len(sets["test"]))
    return sets
