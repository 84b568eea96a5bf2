"""webdataset pipelines for image-text shards: split by node and worker, shuffle buffer, decode, the model's
preprocessing, tokenization by the text tower's tokenizer, and a counter of skipped (undecodable) samples."""
from __future__ import annotations

import glob
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import braceexpand
import torch
import webdataset as wds
from PIL import Image

log = logging.getLogger(__name__)


class SkipCounter:
    """A webdataset handler that logs an exception, counts it, and lets the pipeline go on (skip the sample).

    Counts are per process: every DataLoader worker holds its own copy."""

    def __init__(self, max_logged: int = 10):
        self.count = 0
        self.by_type: dict[str, int] = {}
        self.max_logged = max_logged

    def __call__(self, exn: Exception) -> bool:
        self.count += 1
        name = type(exn).__name__
        self.by_type[name] = self.by_type.get(name, 0) + 1
        if self.count <= self.max_logged:
            log.warning("skipped a sample (%s: %s); %d skipped so far", name, exn, self.count)
        return True


def expand_urls(pattern: str | list[str]) -> list[str]:
    """'data/clip/train-{000000..000011}.tar', a glob ('data/clip/train-*.tar'), several joined by '::'
    (webdataset's convention), or a list -> a list of shard paths (each glob sorted)."""
    if not isinstance(pattern, str):
        return [str(p) for p in pattern]
    urls = []
    for part in (b for piece in pattern.split("::") for b in braceexpand.braceexpand(piece)):
        urls += sorted(glob.glob(part)) if any(c in part for c in "*?[") else [part]
    if not urls:
        raise FileNotFoundError(f"no shards match {pattern!r}")
    return urls


@dataclass
class ConvertMode:
    """PIL image -> the given mode ("L" or "RGB"); a class so that spawned DataLoader workers can pickle it."""

    mode: str

    def __call__(self, image):
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, image)  # transparent -> white, not black
        return image.convert(self.mode)


def image_transform(config, train: bool = False, augment: bool = True):
    """The CLIP config's preprocessing: PIL image -> (C, H, W) float, resized to img_size, `in_chans` channels,
    normalised with image_mean/image_std. With train and augment: small random shifts and scales."""
    from torchvision import transforms as T

    size = config.img_size
    steps = [ConvertMode("L" if config.in_chans == 1 else "RGB")]
    if train and augment:
        steps.append(T.RandomAffine(degrees=8, translate=(0.08, 0.08), scale=(0.9, 1.1)))
    steps += [T.Resize(size, antialias=True), T.CenterCrop(size), T.ToTensor(),
              T.Normalize(list(config.image_mean), list(config.image_std))]
    return T.Compose(steps)


def trim_padding(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Drop the columns after the longest row. Exact for a causal text tower pooled at end-of-text."""
    width = int(mask.sum(1).max()) if mask.numel() else tokens.shape[1]
    return tokens[:, :max(width, 1)]  # (B, T')


@dataclass
class Collate:
    """Samples (image tensor, caption, meta) -> {"images", "text", "captions", "labels", "sources"}."""

    tokenizer: object
    context_length: int
    trim: bool = True

    def __call__(self, samples):
        images, captions, metas = zip(*samples)
        text, mask = self.tokenizer.encode_batch(list(captions), max_len=self.context_length, pad_to_max=True)
        return {"images": torch.stack(images), "text": trim_padding(text, mask) if self.trim else text,
                "captions": list(captions), "labels": torch.tensor([m.get("label", -1) for m in metas]),
                "sources": [m.get("source", "") for m in metas]}


@dataclass
class ToSample:
    """A decoded webdataset sample -> (image tensor, caption, meta). With `random_caption`, the caption is drawn
    from json["captions"] when present (a fresh phrasing each epoch), else the txt."""

    transform: object
    random_caption: bool = False
    seed: int = 0
    rng: random.Random = field(default=None, repr=False)

    def __call__(self, sample):
        if self.rng is None:
            self.rng = random.Random(self.seed + torch.utils.data.get_worker_info().id
                                     if torch.utils.data.get_worker_info() else self.seed)
        meta = sample.get("json") or {}
        caption = sample["txt"]
        if self.random_caption and meta.get("captions"):
            caption = self.rng.choice(meta["captions"])
        image = sample["png"] if "png" in sample else sample["jpg"]
        return self.transform(image), caption, meta


@dataclass
class TagSkipped:
    """Adds batch["skipped"] = (worker id, samples this worker's handler skipped so far): DataLoader workers
    hold copies of the handler, so the count travels with the batches (sum the latest value per worker)."""

    handler: SkipCounter

    def __call__(self, batch: dict) -> dict:
        info = torch.utils.data.get_worker_info()
        batch["skipped"] = (info.id if info else -1, self.handler.count)
        return batch


def image_text_dataset(urls, transform, collate, batch_size: int, train: bool = True, shuffle: int = 2000,
                       random_caption: bool = True, seed: int = 0, handler: SkipCounter | None = None):
    """A webdataset pipeline of collated batches.

    train=True: shards are split by node (rank) and worker, shuffled, repeated forever, samples go through a
    shuffle buffer and batches are full. train=False: one ordered pass, every sample once, last batch partial
    (no node splitting: each rank evaluates the whole set)."""
    handler = handler if handler is not None else SkipCounter()
    urls = expand_urls(urls)
    ds = wds.WebDataset(urls, handler=handler, shardshuffle=len(urls) if train else False,
                        nodesplitter=wds.split_by_node if train else None, workersplitter=wds.split_by_worker,
                        seed=seed, empty_check=False)
    if train:
        ds = ds.shuffle(shuffle, seed=seed)
    ds = ds.decode("pil", handler=handler).map(ToSample(transform, random_caption and train, seed), handler=handler)
    ds = ds.batched(batch_size, collation_fn=collate, partial=not train).map(TagSkipped(handler))
    if train:
        ds = ds.repeat()  # an endless stream: every rank keeps stepping however its shards divide
    ds.skipped = handler
    return ds


def image_text_loader(dataset, num_workers: int = 1):
    """A WebLoader over an already-batched pipeline."""
    return wds.WebLoader(dataset, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0)


def load_all(urls, transform, collate, batch_size: int = 512) -> dict:
    """Every sample of a shard set in order (for evaluation): concatenated batch dict."""
    ds = image_text_dataset(urls, transform, collate, batch_size, train=False)
    out: dict = {}
    for batch in ds:
        batch.pop("skipped", None)
        for k, v in batch.items():
            out.setdefault(k, []).append(v)
    if not out:
        raise ValueError(f"no samples in {urls!r}")
    images = torch.cat(out["images"])
    texts = [t for chunk in out["text"] for t in chunk]  # rows may differ in width after trimming
    text = torch.nn.utils.rnn.pad_sequence(texts, batch_first=True, padding_value=collate.tokenizer.pad_id)
    return {"images": images, "text": text, "captions": sum(out["captions"], []),
            "labels": torch.cat(out["labels"]), "sources": sum(out["sources"], [])}


def shard_dir(urls) -> Path:
    """The folder of the first shard (where classes.json lives)."""
    return Path(expand_urls(urls)[0]).parent


def read_captions(urls, limit: int | None = None) -> list[str]:
    """Every caption in the shards (txt and json["captions"]) without decoding images: a tokenizer corpus."""
    import json

    out = []
    for sample in wds.WebDataset(expand_urls(urls), shardshuffle=False, empty_check=False):
        out.append(sample["txt"].decode("utf-8"))
        if "json" in sample:
            out += json.loads(sample["json"]).get("captions", [])
        if limit is not None and len(out) >= limit:
            break
    return out
