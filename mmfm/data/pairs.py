"""A user's image-text pairs: open_clip's CSV/TSV, webdataset shards, or a folder of images with a same-named
.txt caption beside each. `detect_pairs(path)` says which (one log line); shards stay a stream (a shard
pattern string), CSV and folder pairs are a `PairSet` read through a map-style `PairDataset`.

A PairSet without a test set is split by seed with every copy of an image kept in one split (rows sharing an
image, e.g. several captions of one picture, never straddle train and test; identical image+caption rows are
dropped). Classes for zero-shot come from a `classes.json` beside the data plus a `label` column (and an
optional `source` column), or, when captions repeat (many images share one caption), from the unique captions.
"""
from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image

from ..config import ConfigError
from .formats import DataFormatError, Format, fingerprint, read_utf8, require_path, split_examples, unknown_format
from .imagetext import read_classes
from .stepstream import resumable_loader
from .webdata import (DECODE_ERRORS, SkipCounter, check_shards, concat_batches, expand_urls, image_text_dataset,
                      image_text_loader)

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
PAIR_FORMATS = (
    Format("open_clip CSV/TSV", "a .csv or .tsv file whose header names the image-path and caption columns "
           "(filepath, title by default; --csv-img-key, --csv-caption-key, --csv-separator); relative paths are "
           "resolved against the CSV's folder", "filepath,title\nimages/cat1.jpg,a cat asleep on a sofa\n"
           "images/dog.png,a dog running in the snow"),
    Format("webdataset shards", "a .tar file, a brace pattern or glob of .tar shards, or a folder of *.tar; each "
           "sample an image (.jpg/.png/.webp) with a .txt caption or a .json {\"caption\": ...}",
           "shards/train-000000.tar  (0001.jpg, 0001.txt, 0002.png, 0002.txt, ...)\n"
           "'shards/train-{000000..000099}.tar'\n'shards/train-*.tar::more/train-*.tar'"),
    Format("image + caption folder", "a folder of images, each with a same-named .txt caption beside it",
           "pairs/cat1.jpg\npairs/cat1.txt   (a cat asleep on a sofa)\npairs/trip/dog.png + pairs/trip/dog.txt"),
)


@dataclass(frozen=True)
class CsvKeys:
    """open_clip's CSV flags: the image and caption columns, and the separator (None: tab for .tsv, else ',')."""

    img_key: str = "filepath"
    caption_key: str = "title"
    separator: str | None = None


@dataclass
class PairSet:
    """Image-text pairs held as files: image paths, captions, labels (-1: none) and sources, plus the class
    names and prompts ({source: {"classnames", "prompts"}}) that zero-shot evaluation uses."""

    format: str
    root: Path
    paths: list[str]
    captions: list[str]
    labels: list[int]
    sources: list[str]
    classes: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index) -> PairSet:
        idx = [int(i) for i in index]
        return replace(self, paths=[self.paths[i] for i in idx], captions=[self.captions[i] for i in idx],
                       labels=[self.labels[i] for i in idx], sources=[self.sources[i] for i in idx])


def is_shard_pattern(path: str) -> bool:
    return "::" in path or any(c in path for c in "{*?[") or path.startswith(("pipe:", "http://", "https://"))


def detect_pairs(path, keys: CsvKeys = CsvKeys(), what: str = "--data") -> str | PairSet:
    """A shard pattern (webdataset) or a PairSet (CSV/TSV or folder); unknown layouts list the accepted ones."""
    text = str(path)
    if is_shard_pattern(text):
        urls = expand_urls(text)
        check_shards(urls)
        log.info("%s %s: webdataset, %d shard(s)", what, text, len(urls))
        return text
    p = require_path(path, what)
    if p.is_file() and p.name.endswith(".tar"):
        check_shards([str(p)])
        log.info("%s %s: webdataset, 1 shard", what, p)
        return str(p)
    if p.is_file() and p.suffix.lower() in (".csv", ".tsv"):
        return _found(read_csv_pairs(p, keys), what, p)
    if p.is_file():
        raise unknown_format(p, "image-text", PAIR_FORMATS, f"a {p.suffix or 'suffix-less'} file")
    shards = sorted(p.glob("train-*.tar")) or sorted(p.glob("*.tar"))
    if shards:
        check_shards([str(s) for s in shards])
        log.info("%s %s: webdataset folder, %d shard(s)", what, p, len(shards))
        return str(p / ("train-*.tar" if shards[0].name.startswith("train-") else "*.tar"))
    return _found(read_folder_pairs(p), what, p)


def _found(pairs: PairSet, what: str, path: Path) -> PairSet:
    n_img = len(set(pairs.paths))
    log.info("%s %s: %s, %d pairs (%d images)", what, path, pairs.format, len(pairs), n_img)
    return pairs


def read_csv_pairs(path: Path, keys: CsvKeys = CsvKeys()) -> PairSet:
    """open_clip's CSV/TSV: image paths (relative to the CSV's folder) and captions; every path must exist."""
    sep = keys.separator or ("\t" if path.suffix.lower() == ".tsv" else ",")
    reader = csv.reader(io.StringIO(read_utf8(path)), delimiter=sep)
    header = next(reader, None)
    missing = [k for k in (keys.img_key, keys.caption_key) if not header or k not in header]
    if missing:
        raise DataFormatError(f"{path}: no column(s) {missing} in the header {header} (separator {sep!r}); name "
                              "the columns with --csv-img-key / --csv-caption-key, the separator with --csv-separator")
    col = {k: header.index(k) for k in header}
    rows = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataFormatError(f"{path}:{reader.line_num}: {len(row)} fields where the header has "
                                  f"{len(header)} (separator {sep!r})")
        if not row[col[keys.img_key]].strip() or not row[col[keys.caption_key]].strip():
            raise DataFormatError(f"{path}:{reader.line_num}: empty {keys.img_key!r} or {keys.caption_key!r}")
        rows.append((reader.line_num, row))
    if not rows:
        raise DataFormatError(f"{path}: the header {header} is there but no rows follow")
    paths = [_resolve(path.parent, r[col[keys.img_key]].strip()) for _, r in rows]
    _require_images(path, [(n, p) for (n, _), p in zip(rows, paths)])
    captions = [r[col[keys.caption_key]].strip() for _, r in rows]
    labels, sources, classes = _labels(path.parent, [r for _, r in rows], col, path)
    return PairSet("open_clip CSV", path.parent, paths, captions, labels, sources, classes)


def _resolve(root: Path, name: str) -> str:
    p = Path(name).expanduser()
    return str(p if p.is_absolute() else root / p)


def _require_images(path: Path, numbered: list[tuple[int, str]]) -> None:
    missing = [(n, p) for n, p in numbered if not Path(p).is_file()]
    if missing:
        shown = "; ".join(f"line {n}: {p}" for n, p in missing[:5])
        raise DataFormatError(f"{path}: {len(missing)} of {len(numbered)} image paths do not exist (relative "
                              f"paths are resolved against {path.parent}): {shown}{' ...' if len(missing) > 5 else ''}")


def _labels(root: Path, rows: list[list[str]], col: dict, path: Path) -> tuple[list[int], list[str], dict]:
    """Labels from a 'label' column (class name or index) when classes.json is beside the data, else none."""
    classes = read_classes(root)
    if not classes or "label" not in col:
        return [-1] * len(rows), [""] * len(rows), {}
    only = next(iter(classes)) if len(classes) == 1 else None
    labels, sources = [], []
    for row in rows:
        src = row[col["source"]].strip() if "source" in col else only
        name = row[col["label"]].strip()
        if not name:
            labels.append(-1)
        elif src not in classes:
            raise DataFormatError(f"{path}: source {src!r} of a row labelled {name!r} is not in "
                                  f"{root / 'classes.json'} (sources: {sorted(classes)})")
        else:
            labels.append(_class_index(classes[src]["classnames"], name, path))
        sources.append(src or "")
    return labels, sources, classes


def _class_index(classnames: list[str], name: str, path: Path) -> int:
    if name in classnames:
        return classnames.index(name)
    if name.isdigit() and int(name) < len(classnames):
        return int(name)
    raise DataFormatError(f"{path}: label {name!r} is not a class name in classes.json ({classnames[:5]} ...)")


def read_folder_pairs(root: Path) -> PairSet:
    """Every image under root (recursively) with a same-named .txt beside it; images without one are skipped
    (counted in the log)."""
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    paired = [p for p in images if p.with_suffix(".txt").is_file()]
    if not paired:
        why = f"{len(images)} images but none has a same-named .txt caption" if images else "no images, no .tar"
        raise unknown_format(root, "image-text", PAIR_FORMATS, why)
    if len(paired) < len(images):
        first = next(p for p in images if not p.with_suffix(".txt").is_file())
        log.warning("%s: %d of %d images have no .txt caption beside them and are left out (e.g. %s)", root,
                    len(images) - len(paired), len(images), first)
    captions = []
    for p in paired:
        text = read_utf8(p.with_suffix(".txt")).strip()
        if not text:
            raise DataFormatError(f"{p.with_suffix('.txt')}: the caption file is empty")
        captions.append(text)
    n = len(paired)
    return PairSet("image + caption folder", root, [str(p) for p in paired], captions, [-1] * n, [""] * n)


def split_pairs(pairs: PairSet, test_fraction: float, seed: int) -> tuple[PairSet, PairSet, dict]:
    """(train, test, sizes): a seeded split by image content (mmfm.data.formats.split_examples over distinct
    images), so that copies of an image never straddle the split; identical image+caption rows are dropped."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs.paths):
        groups.setdefault(fingerprint(Path(p).read_bytes()), []).append(i)
    members = list(groups.values())
    split = split_examples(len(members), None, val_fraction=0.0, test_fraction=test_fraction, seed=seed)
    dropped = 0

    def rows(group_index) -> list[int]:
        nonlocal dropped
        out = []
        for g in group_index:
            seen = set()
            for i in members[int(g)]:
                dropped += pairs.captions[i] in seen
                if pairs.captions[i] not in seen:
                    seen.add(pairs.captions[i])
                    out.append(i)
        return sorted(out)

    train, test = pairs.subset(rows(split.train)), pairs.subset(rows(split.test))
    sizes = {"train": len(train), "test": len(test), "train_images": len(split.train),
             "test_images": len(split.test), "rows_sharing_an_image": len(pairs) - len(members),
             "duplicates_dropped": dropped, "seed": seed}
    return train, test, sizes


def caption_classes(train: PairSet, test: PairSet) -> tuple[PairSet, PairSet]:
    """Unlabelled pairs whose captions repeat (at most half as many unique captions as pairs): the unique
    training captions become the classes of a source "captions" with the prompt "{}" (test rows whose
    caption was never trained on get label -1). Otherwise the pairs are returned as they are."""
    if any(lab >= 0 for lab in train.labels + test.labels):
        return train, test
    counts = Counter(train.captions)
    if not 2 <= len(counts) <= len(train) / 2:
        return train, test
    names = sorted(counts)
    index = {c: i for i, c in enumerate(names)}
    classes = {"captions": {"classnames": names, "prompts": ["{}"]}}
    log.info("no classes.json beside the data; %d unique captions over %d training pairs are used as the "
             "zero-shot classes (prompt '{}')", len(names), len(train))

    def label(ps: PairSet) -> PairSet:
        return replace(ps, labels=[index.get(c, -1) for c in ps.captions], sources=["captions"] * len(ps),
                       classes=classes)

    return label(train), label(test)


def check_images(pairs: PairSet, n: int = 16) -> None:
    """Open the first n images: a set whose every checked image is unreadable fails before anything runs."""
    errors = []
    for p in pairs.paths[:n]:
        try:
            with Image.open(p) as im:
                im.load()
        except DECODE_ERRORS as e:
            errors.append(f"{p}: {type(e).__name__}: {e}")
    if errors and len(errors) == min(n, len(pairs)):
        raise DataFormatError(f"none of the first {len(errors)} images can be read, e.g. {errors[0]}")
    if errors:
        log.warning("%d of the first %d images cannot be read and will be skipped, e.g. %s", len(errors),
                    min(n, len(pairs)), errors[0])


class PairDataset(torch.utils.data.Dataset):
    """Map-style (image tensor, caption, meta) over a PairSet. An unreadable image is counted by the handler;
    with `retry` the next pair is taken instead (a run of `max_tries` bad ones in a row is an error), without
    it the item is None (evaluation drops it)."""

    def __init__(self, pairs: PairSet, transform, handler: SkipCounter | None = None, retry: bool = True,
                 max_tries: int = 8):
        self.pairs, self.transform, self.retry, self.max_tries = pairs, transform, retry, max_tries
        self.handler = handler if handler is not None else SkipCounter()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        for j in range(self.max_tries if self.retry else 1):
            try:
                return self._load((i + j) % len(self.pairs))
            except DataFormatError as e:
                self.handler(e)
        if not self.retry:
            return None
        raise DataFormatError(f"{self.max_tries} images in a row could not be read (first: {self.handler.first})")

    def _load(self, k: int):
        path = self.pairs.paths[k]
        try:
            with Image.open(path) as im:
                im.load()
                image = self.transform(im)
        except DECODE_ERRORS as e:
            raise DataFormatError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from e
        meta = {"label": self.pairs.labels[k], "source": self.pairs.sources[k]}
        return image, self.pairs.captions[k], meta


@dataclass
class CountingCollate:
    """Drops unreadable items (None), collates the rest, and tags the batch with (worker id, skipped so far)
    like the webdataset stream does."""

    collate: object
    handler: SkipCounter

    def __call__(self, samples):
        samples = [s for s in samples if s is not None]
        if not samples:
            return None
        batch = self.collate(samples)
        info = torch.utils.data.get_worker_info()
        batch["skipped"] = (info.id if info else -1, self.handler.count)
        return batch


def load_pairs(pairs: PairSet, transform, collate, batch_size: int = 512) -> dict:
    """Every readable pair in order (for evaluation), as one batch dict like webdata.load_all."""
    handler = SkipCounter()
    loader = torch.utils.data.DataLoader(PairDataset(pairs, transform, handler, retry=False), batch_size=batch_size,
                                         collate_fn=CountingCollate(collate, handler))
    batches = [b for b in loader if b is not None]
    if not batches:
        raise DataFormatError(f"none of the {len(pairs)} images under {pairs.root} could be read")
    if handler.count:
        log.warning("evaluation skipped %d unreadable images of %d", handler.count, len(pairs))
    return concat_batches(batches, collate.tokenizer.pad_id)


def train_loader(data: str | PairSet, transform, collate, batch_size: int, num_workers: int = 1,
                 shuffle: int = 2000, random_caption: bool = True, seed: int = 0, world: int = 1):
    """The training loader of either kind: the endless webdataset stream for shards, a shuffled map-style
    loader (full batches, split over the ranks under DDP/FSDP) for a PairSet, resumable mid-epoch
    (mmfm.data.stepstream.resumable_loader)."""
    if not isinstance(data, PairSet):
        ds = image_text_dataset(data, transform, collate, batch_size, shuffle=shuffle,
                                random_caption=random_caption, seed=seed)
        return image_text_loader(ds, num_workers)
    if len(data) < batch_size * world:
        raise ConfigError(f"batch_size={batch_size} x {world} process(es) is more than the {len(data)} training "
                          f"pairs: set batch_size={max(1, len(data) // world)} or less")
    handler = SkipCounter()
    return resumable_loader(PairDataset(data, transform, handler), batch_size, seed, num_workers=num_workers,
                            persistent_workers=num_workers > 0, collate_fn=CountingCollate(collate, handler))


def resolve_pairs(data, test_data=None, keys: CsvKeys = CsvKeys(), test_fraction: float = 0.2,
                  seed: int = 0) -> tuple[str | PairSet, str | PairSet, dict]:
    """(train, test, split sizes) for --data and --test-data. Without --test-data, CSV and folder pairs are
    split by seed (split_pairs); shards use test-*.tar beside the training shards. Every check runs here,
    before a run writes anything."""
    train = detect_pairs(data, keys)
    test = detect_pairs(test_data, keys, "--test-data") if test_data is not None else None
    sizes: dict = {}
    if test is None and isinstance(train, PairSet):
        train, test, sizes = split_pairs(train, test_fraction, seed)
        log.info("split by seed %d: %d train / %d test pairs (%d / %d images; %d rows share an image with another, "
                 "kept in one split; %d duplicate pairs dropped)", seed, sizes["train"], sizes["test"],
                 sizes["train_images"], sizes["test_images"], sizes["rows_sharing_an_image"],
                 sizes["duplicates_dropped"])
        if not len(test):
            raise DataFormatError(f"--data {data}: {sizes['train_images']} distinct image(s) leave none for the "
                                  f"test split at test_fraction={test_fraction}; add pairs or pass --test-data")
    elif test is None:
        test = _shards_beside(train)
    else:  # given splits: their sizes in pairs where they are files
        sizes.update({name: len(part) for name, part in (("train", train), ("test", test))
                      if isinstance(part, PairSet)})
    for part in (train, test):
        if isinstance(part, PairSet):
            check_images(part)
    if isinstance(train, PairSet) and isinstance(test, PairSet):
        train, test = caption_classes(train, test)
    return train, test, {**sizes, "format": train.format if isinstance(train, PairSet) else "webdataset"}


def _shards_beside(train: str) -> str:
    pattern = str(Path(expand_urls(train)[0]).parent / "test-*.tar")
    try:
        check_shards(expand_urls(pattern))
    except FileNotFoundError:
        raise DataFormatError(f"--data {train}: no --test-data given and no test-*.tar beside the training "
                              "shards (shards are a stream and are not split); pass --test-data") from None
    return pattern
