"""Captioned images for a VLM: the CLIP shards' digits and animals (mmfm.data.imagetext), same split as CLIP.

    sets = caption_sets("data/clip", n_test=500)      # {"train", "test"}: CaptionSet over the shards' samples
    ex = sets["train"][0]     # ex.image (1, 28, 28) uint8, ex.question (the fixed prompt), ex.answer (a caption),
                              # ex.captions (every caption written for the image: the references), ex.source

The training split is the shards' train-*.tar and the test split their test-*.tar, which build_label_shards
splits by image: no test image is in training. A training item draws one of its image's captions afresh each
time it is read (as the CLIP recipe's random_caption), so the model sees every phrasing; a test item carries
the sample's own caption as `answer` and all of them as `captions` (the references of BLEU and ROUGE).
"""
from __future__ import annotations

import io
import json
import logging
import random
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


def caption_tokenizer() -> CharTokenizer:
    """Characters of the prompt and every caption: lowercase letters, digits, space and ",:.-'?"."""
    return CharTokenizer(string.ascii_lowercase + string.digits + " ,:.-'?")


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


def caption_sets(shard_dir: str | Path = "data/clip", n_test: int = 500, seed: int = 0) -> dict:
    """{"train": CaptionSet of train-*.tar, "test": a seeded random n_test of test-*.tar (0: all)}; the default
    shards are built when missing, as the CLIP recipe does."""
    d = Path(shard_dir)
    if d == Path("data/clip") and not default_shards_ready(d):
        log.info("building the default shards under %s (MNIST-5k + animal silhouettes)", d)
        build_label_shards(d)
    train, test = sorted(map(str, d.glob("train-*.tar"))), sorted(map(str, d.glob("test-*.tar")))
    if not train or not test:
        raise FileNotFoundError(f"{d} holds no train-*.tar and test-*.tar shards (mmfm.data.imagetext writes them)")
    test_samples = read_shards(test)
    if n_test and n_test < len(test_samples):
        keep = sorted(random.Random(seed).sample(range(len(test_samples)), n_test))
        test_samples = [test_samples[i] for i in keep]
    sets = {"train": CaptionSet(read_shards(train), train=True, seed=seed), "test": CaptionSet(test_samples, False)}
    log.info("captions from %s: %d train / %d test samples", d, len(sets["train"]), len(sets["test"]))
    return sets
