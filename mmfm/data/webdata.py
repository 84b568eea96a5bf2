"""webdataset pipelines for image-text shards: split by node and worker, shuffle buffer, decode, the model's
preprocessing, tokenization by the text tower's tokenizer, and a counter of skipped (undecodable) samples.

A shard set that yields no sample fails instead of spinning: every shard is checked (exists, is a tar) before
training, and the endless training stream raises when a whole pass over its shards gives nothing."""
from __future__ import annotations

import glob
import json
import logging
import random
import struct
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import braceexpand
import numpy as np
import torch
import webdataset as wds
from PIL import Image

from .formats import DataFormatError

log = logging.getLogger(__name__)
IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
# what a broken sample raises while it is read or decoded (PIL's UnidentifiedImageError and "image file is
# truncated" are OSErrors, a corrupt tar a TarError); anything else is a bug and is raised, not skipped
DECODE_ERRORS = (DataFormatError, OSError, EOFError, tarfile.TarError, UnicodeDecodeError, json.JSONDecodeError,
                 SyntaxError, struct.error, zlib.error, Image.DecompressionBombError)


class SkipCounter:
    """A webdataset handler that logs a decode error, counts it, and lets the pipeline go on (skip the sample).
    Any other exception is raised: a bug must not pass for a bad sample.

    Counts are per process: every DataLoader worker holds its own copy."""

    def __init__(self, max_logged: int = 10):
        self.count = 0
        self.by_type: dict[str, int] = {}
        self.max_logged = max_logged
        self.first = ""  # the first error skipped, for the message of a run that reads nothing

    def __call__(self, exn: Exception) -> bool:
        where, cause = "", exn
        if isinstance(exn, wds.autodecode.DecodingError):  # webdataset wraps what the decoder raised
            where, cause = f"{exn.key}.{exn.k} in {exn.url}: ", exn.__cause__
        if not isinstance(cause, DECODE_ERRORS):
            raise exn
        self.count += 1
        name = type(cause).__name__
        self.by_type[name] = self.by_type.get(name, 0) + 1
        self.first = self.first or f"{where}{name}: {cause}"
        if self.count <= self.max_logged:
            log.warning("skipped a sample (%s%s: %s); %d skipped so far", where, name, cause, self.count)
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


def check_shards(urls: list[str]) -> None:
    """Every local shard exists and opens as a tar with at least one member (remote or piped urls are left to
    the reader): a missing or broken shard fails here, naming it, instead of yielding nothing forever."""
    for url in urls:
        if "://" in url or url.startswith("pipe:"):
            continue
        path = Path(url[len("file:"):] if url.startswith("file:") else url)
        if not path.is_file():
            raise FileNotFoundError(f"shard {url}: no such file")
        try:
            with tarfile.open(path) as tar:
                if tar.next() is None:
                    raise DataFormatError(f"shard {url}: the tar file is empty")
        except tarfile.TarError as e:
            raise DataFormatError(f"shard {url}: not a readable tar file ({e}); webdataset shards are tar "
                                  "files of samples such as 0001.jpg + 0001.txt") from None


@dataclass
class ConvertMode:
    """PIL image -> the given mode ("L" or "RGB"); a class so that spawned DataLoader workers can pickle it.
    The first conversion of each mode, and the first image whose size differs from the first one, are logged
    once per process."""

    mode: str
    modes_seen: set = field(default_factory=set, repr=False)
    first_size: tuple | None = field(default=None, repr=False)
    sizes_logged: bool = field(default=False, repr=False)

    def __call__(self, image):
        self._note(image)
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, image)  # transparent -> white, not black
        return image.convert(self.mode)

    def _note(self, image) -> None:
        if image.mode != self.mode and image.mode not in self.modes_seen:
            self.modes_seen.add(image.mode)
            log.info("converting %s images to %s (logged once per mode)", image.mode, self.mode)
        self.first_size = self.first_size or image.size
        if image.size != self.first_size and not self.sizes_logged:
            self.sizes_logged = True
            log.info("images of different sizes (%dx%d, %dx%d, ...) are resized and centre-cropped to the "
                     "model's img_size (logged once)", *self.first_size, *image.size)


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


def stream_rng(seed: int) -> random.Random:
    """A generator for this (seed, rank, DataLoader worker): ranks and workers draw different streams."""
    rank, _, worker, _ = wds.utils.pytorch_worker_info()
    return random.Random(int(np.random.SeedSequence([seed, rank, worker]).generate_state(1)[0]))


@dataclass
class ToSample:
    """A decoded webdataset sample (an image as png/jpg/jpeg/webp; a caption as txt or json "caption"/"text")
    -> (image tensor, caption, meta). With `random_caption`, the caption is drawn from json["captions"] when
    present (a fresh phrasing each epoch), else the txt. A sample without an image or caption is a
    DataFormatError (skipped and counted)."""

    transform: object
    random_caption: bool = False
    seed: int = 0
    rng: random.Random = field(default=None, repr=False)

    def __call__(self, sample):
        if self.rng is None:
            self.rng = stream_rng(self.seed)
        meta = sample.get("json") or {}
        meta = meta if isinstance(meta, dict) else {}
        caption = sample.get("txt") or meta.get("caption") or meta.get("text")
        if self.random_caption and meta.get("captions"):
            caption = self.rng.choice(meta["captions"])
        image = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
        if image is None or not caption:
            what = "an image (.png/.jpg/.jpeg/.webp)" if image is None else 'a caption (.txt, or .json "caption")'
            raise DataFormatError(f"sample {sample.get('__key__')} in {sample.get('__url__')} has no {what}; "
                                  f"it holds {sorted(k for k in sample if not k.startswith('__'))}")
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
    check_shards(urls)
    ds = wds.WebDataset(urls, handler=handler, shardshuffle=len(urls) if train else False,
                        nodesplitter=wds.split_by_node if train else None, workersplitter=wds.split_by_worker,
                        seed=seed, empty_check=False)
    if train:
        ds = ds.shuffle(shuffle, seed=seed)
    ds = ds.decode("pil", handler=handler).map(ToSample(transform, random_caption and train, seed), handler=handler)
    ds = ds.batched(batch_size, collation_fn=collate, partial=not train).map(TagSkipped(handler))
    if train:  # an endless stream: every rank keeps stepping however its shards divide
        ds = Endless(ds, handler, len(urls))
    ds.skipped = handler
    return ds


class Endless(torch.utils.data.IterableDataset):
    """Repeats a one-pass pipeline forever, and raises when a whole pass yields nothing (missing or broken
    shards, every sample undecodable, or a worker left without shards) instead of spinning on empty passes."""

    def __init__(self, pipeline, handler: SkipCounter, n_shards: int):
        super().__init__()
        self.pipeline, self.handler, self.n_shards = pipeline, handler, n_shards

    def __iter__(self):
        while True:
            n = 0
            for n, batch in enumerate(self.pipeline, 1):
                yield batch
            if n == 0:
                raise DataFormatError(self._why())

    def _why(self) -> str:
        rank, world, worker, workers = wds.utils.pytorch_worker_info()
        if self.n_shards < world * workers:
            return (f"rank {rank} worker {worker} got no shard: {self.n_shards} shard(s) for {world} rank(s) x "
                    f"{workers} DataLoader worker(s); write at least one shard per worker (or set num_workers=)")
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(self.handler.by_type.items())) or "none"
        return (f"a full pass over the training shards gave no batch (rank {rank}, worker {worker}); samples "
                f"skipped: {skipped}; first error: {self.handler.first or '-'}. Check that the shards hold "
                "images with captions and that there are at least batch_size of them")


def image_text_loader(dataset, num_workers: int = 1):
    """A WebLoader over an already-batched pipeline."""
    return wds.WebLoader(dataset, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0)


def load_all(urls, transform, collate, batch_size: int = 512) -> dict:
    """Every sample of a shard set in order (for evaluation): concatenated batch dict."""
    batches = list(image_text_dataset(urls, transform, collate, batch_size, train=False))
    if not batches:
        raise DataFormatError(f"no samples could be read from {urls!r}")
    return concat_batches(batches, collate.tokenizer.pad_id)


def concat_batches(batches: list[dict], pad_id: int) -> dict:
    """Collated batches -> one dict; text rows (trimmed per batch) padded to the widest."""
    out: dict = {}
    for batch in batches:
        batch.pop("skipped", None)
        for k, v in batch.items():
            out.setdefault(k, []).append(v)
    texts = [t for chunk in out["text"] for t in chunk]  # rows may differ in width after trimming
    text = torch.nn.utils.rnn.pad_sequence(texts, batch_first=True, padding_value=pad_id)
    return {"images": torch.cat(out["images"]), "text": text, "captions": sum(out["captions"], []),
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
