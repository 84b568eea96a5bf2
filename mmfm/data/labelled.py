"""Labelled images from a user's files: torchvision's ImageFolder layout, a CSV of path,label, a MedMNIST-layout
.npz, a folder of DICOM or NIfTI files with a labels.csv beside them, or a built-in name (digits, animals,
brain_mri). Every path goes through one chain, logged once:

    read (PIL / pydicom / nibabel / numpy) -> convert mode (one channel count) -> resize (mixed sizes only)
    -> scale to [0, 1] by dtype (PixelScale) -> [the recipe: resize to the backbone, normalise mean/std]

`load_labelled(path, ...)` returns an `NpzTask` (train / val / test images and labels, task kind, label names,
split sizes); labels are checked when the data is loaded, naming the first bad one.
"""
from __future__ import annotations

import csv
import io
import logging
import os
import struct
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from .formats import DataFormatError, Format, fingerprint, read_utf8, require_path, split_examples, unknown_format
from .medical import SPLITS, NpzTask, dicom_to_array, dicom_window, load_npz, nifti_slices, read_nifti, window
from .pixels import Chain, PixelScale
from .sources import ANIMAL_NAMES, DIGIT_NAMES, load_animals, load_mnist5k, split_indices

log = logging.getLogger(__name__)

# datasets built by scripts in datasets/ (name -> (file under data/, the command that builds it))
BUILT = {"brain_mri": ("data/brain_mri_patches.npz", "python datasets/brain_mri_patches.py")}
OFFLINE = {"digits": (load_mnist5k, DIGIT_NAMES), "animals": (load_animals, ANIMAL_NAMES)}
LABELS_CSV = "labels.csv"
DICOM_EXT, NIFTI_EXT = (".dcm", ".dicom"), (".nii", ".nii.gz")
PIL_EXT = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's IMG_EXTENSIONS
IMAGE_EXT = PIL_EXT + DICOM_EXT + NIFTI_EXT + (".npy",)
PATH_KEYS, LABEL_KEYS = ("path", "filepath", "image", "file"), ("label", "labels")

FORMATS = [
    Format("ImageFolder", "a folder with one sub-folder of images per class (torchvision's layout)",
           "my_xrays/normal/0001.png\nmy_xrays/pneumonia/0002.png\nmy_xrays/pneumonia/0003.jpg"),
    Format("CSV", "a .csv file with columns path,label (multi-label: a|b); paths relative to the CSV's folder",
           "path,label\nimages/0001.png,normal\nimages/0002.png,effusion|nodule"),
    Format("MedMNIST .npz", "a .npz file with {train,val,test}_{images,labels} arrays",
           "train_images: (N, H, W[, C]) uint8, or float in [0, 1], or 16-bit / signed medical values\n"
           "train_labels: (N,) or (N, 1) class ids, (N, L) 0/1 for multi-label\n"
           "val_images, val_labels, test_images, test_labels: the same"),
    Format("DICOM folder", f"a folder of DICOM files with a {LABELS_CSV} (path,label) beside them",
           f"scans/{LABELS_CSV}:  path,label\nscans/{LABELS_CSV}:  ct_001.dcm,haemorrhage\nscans/ct_001.dcm"),
    Format("NIfTI folder", f"a folder of .nii/.nii.gz files with a {LABELS_CSV}; a 3-D volume gives its axial slices",
           f"vols/{LABELS_CSV}:  path,label\nvols/{LABELS_CSV}:  sub01.nii.gz,patient\nvols/sub01.nii.gz"),
    Format("built-in", "a dataset name", "digits\nanimals\nbrain_mri   (python datasets/brain_mri_patches.py builds it)"),
]


class UnreadableImage(Exception):
    """An image file that exists but cannot be decoded (skipped and counted)."""


@dataclass
class Examples:
    """What a reader found: one image per example in its file's dtype ((H, W) or (H, W, C)), label names,
    the source file of each example (slices of one volume share it), and whether a DICOM window scaled it."""

    images: list[np.ndarray]
    labels: list[tuple[str, ...]]
    groups: list[int]
    windowed: list[bool]
    files: list[str]
    bad: list[str]

    def select(self, idx) -> "Examples":
        idx = list(idx)
        return Examples([self.images[i] for i in idx], [self.labels[i] for i in idx],
                        [self.groups[i] for i in idx], [self.windowed[i] for i in idx], self.files, self.bad)


# ---- reading one file ------------------------------------------------------------------------------

def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("1", "LA", "La"):
            im = im.convert("L")
        elif im.mode not in ("L", "RGB", "I", "F") and not im.mode.startswith("I;16"):
            im = im.convert("RGB")  # palette, RGBA, CMYK, YCbCr, ...: alpha dropped
        return np.array(im)


def _read_dicom(path: Path) -> tuple[list[np.ndarray], bool]:
    """Frames of a DICOM file: windowed to [0, 1] by its WindowCenter/Width when it has them (MONOCHROME1
    inverted), else in real units (slope/intercept applied); RGB files stay uint8."""
    import pydicom

    ds = pydicom.dcmread(path)
    if getattr(ds, "SamplesPerPixel", 1) == 3:
        arr = ds.pixel_array
        return (list(arr) if arr.ndim == 4 else [arr]), False
    values = dicom_to_array(ds)
    win = dicom_window(ds)
    if win is not None:
        values = window(values, *win)
        if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
            values = 1.0 - values
    return (list(values) if values.ndim == 3 else [values]), win is not None


def read_image_file(path: str | os.PathLike) -> tuple[list[np.ndarray], bool]:
    """One file -> (2-D images (a volume gives its axial slices, a multi-frame DICOM its frames), windowed).
    Decoding failures raise UnreadableImage."""
    path = Path(path)
    name = path.name.lower()
    try:
        if name.endswith(NIFTI_EXT):
            vol, _ = read_nifti(path)
            vol = vol[..., 0] if vol.ndim == 4 and vol.shape[-1] == 1 else vol
            if vol.ndim == 2 or (vol.ndim == 3 and vol.shape[2] == 1):
                return [vol.reshape(vol.shape[:2])], False
            return list(nifti_slices(vol)), False  # (Z, H, W) axial slices
        if name.endswith(".npy"):
            return [np.load(path, allow_pickle=False)], False
        if name.endswith(DICOM_EXT) or _has_dicom_magic(path):
            return _read_dicom(path)
        return [_read_pil(path)], False
    except FileNotFoundError:
        raise
    except _decode_errors() as e:
        raise UnreadableImage(f"{path}: {type(e).__name__}: {e}") from None


def _decode_errors() -> tuple[type[BaseException], ...]:
    """What the decoders raise for a damaged or foreign file (PIL: OSError; numpy: ValueError; pydicom:
    InvalidDicomError, AttributeError without pixel data; nibabel: ImageFileError; gzip: zlib.error, EOFError)."""
    errors: list[type[BaseException]] = [OSError, ValueError, EOFError, AttributeError, zlib.error, struct.error]
    try:
        from pydicom.errors import InvalidDicomError

        errors.append(InvalidDicomError)
    except ImportError:
        pass
    try:
        from nibabel.filebasedimages import ImageFileError

        errors.append(ImageFileError)
    except ImportError:
        pass
    return tuple(errors)


def _has_dicom_magic(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


# ---- readers ---------------------------------------------------------------------------------------

def _collect(items: list[tuple[Path, tuple[str, ...]]], max_bad_fraction: float, source) -> Examples:
    """Read every (file, labels); unreadable files are skipped and counted; past max_bad_fraction the run stops."""
    ex = Examples([], [], [], [], [], [])
    for path, labels in items:
        try:
            images, windowed = read_image_file(path)
        except UnreadableImage as e:
            ex.bad.append(str(e))
            continue
        ex.images += images
        ex.labels += [labels] * len(images)
        ex.groups += [len(ex.files)] * len(images)
        ex.windowed += [windowed] * len(images)
        ex.files.append(str(path))
    if ex.bad:
        shown = "\n  ".join(ex.bad[:5])
        if len(ex.bad) > max_bad_fraction * len(items):
            raise DataFormatError(f"{source}: {len(ex.bad)} of {len(items)} image files could not be read, more than "
                                  f"max_bad_fraction={max_bad_fraction}; the first:\n  {shown}")
        log.warning("%s: skipped %d unreadable image file(s) of %d:\n  %s", source, len(ex.bad), len(items), shown)
    if not ex.images:
        raise DataFormatError(f"{source}: no readable images")
    return ex


def read_image_folder(root: Path, max_bad_fraction: float) -> Examples:
    """torchvision's ImageFolder layout (find_classes / make_dataset), with DICOM, NIfTI and .npy files too."""
    from torchvision.datasets.folder import find_classes, make_dataset

    try:
        classes, class_to_idx = find_classes(root)
    except FileNotFoundError:
        raise DataFormatError(f"{root}: no class sub-folders") from None
    items = make_dataset(root, class_to_idx, extensions=IMAGE_EXT, allow_empty=True)
    counts = Counter(c for _, c in items)
    empty = [c for c in classes if counts[class_to_idx[c]] == 0]
    if empty:
        raise DataFormatError(f"{root}: class folder(s) {empty} hold no image files (accepted: {', '.join(IMAGE_EXT)})")
    return _collect([(Path(p), (classes[c],)) for p, c in items], max_bad_fraction, root)


def read_label_csv(path: Path, max_bad_fraction: float) -> Examples:
    """A CSV of path,label (header required; multi-label as a|b); paths relative to the CSV's folder."""
    rows = list(csv.reader(io.StringIO(read_utf8(path))))
    header = [h.strip().lower() for h in rows[0]] if rows else []
    pcol = next((header.index(k) for k in PATH_KEYS if k in header), None)
    lcol = next((header.index(k) for k in LABEL_KEYS if k in header), None)
    if pcol is None or lcol is None:
        raise DataFormatError(f"{path}:1: expected a header with columns path,label (also accepted: {PATH_KEYS} / "
                              f"{LABEL_KEYS}); got {rows[0] if rows else 'an empty file'}")
    items, missing = [], []
    for lineno, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) <= max(pcol, lcol) or not row[lcol].strip() or not row[pcol].strip():
            raise DataFormatError(f"{path}:{lineno}: expected a path and a label, got {row}")
        file = path.parent / row[pcol].strip()
        labels = tuple(sorted({s.strip() for s in row[lcol].split("|") if s.strip()}))
        (items if file.is_file() else missing).append((file, labels))
    if missing:
        shown = ", ".join(str(f) for f, _ in missing[:5])
        raise FileNotFoundError(f"{path}: {len(missing)} image path(s) do not exist, e.g. {shown} "
                                "(paths are relative to the CSV's folder)")
    if not items:
        raise DataFormatError(f"{path}: no rows after the header")
    return _collect(items, max_bad_fraction, path)


def detect(path: str | os.PathLike) -> str:
    """The format name of a --data path (FORMATS); an unknown layout fails listing the accepted ones."""
    text = os.fspath(path)
    if text in OFFLINE or text in BUILT:
        return "built-in"
    p = require_path(path)
    if p.is_file():
        if p.suffix.lower() == ".npz":
            return "MedMNIST .npz"
        if p.suffix.lower() in (".csv", ".tsv"):
            return "CSV"
        raise unknown_format(path, "labelled-image", FORMATS, f"a {p.suffix or 'file without extension'}")
    if (p / LABELS_CSV).is_file():
        files = [f for f in p.iterdir() if f.is_file() and f.name != LABELS_CSV]
        if any(f.name.lower().endswith(NIFTI_EXT) for f in files):
            return "NIfTI folder"
        dicom = any(f.name.lower().endswith(DICOM_EXT) for f in files) or any(map(_has_dicom_magic, files[:3]))
        return "DICOM folder" if dicom else "CSV"
    if any(d.is_dir() for d in p.iterdir()):
        return "ImageFolder"
    raise unknown_format(path, "labelled-image", FORMATS, f"a folder with no sub-folders and no {LABELS_CSV}")


def read_examples(path: str | os.PathLike, fmt: str, max_bad_fraction: float) -> Examples:
    p = Path(path)
    if fmt == "ImageFolder":
        return read_image_folder(p, max_bad_fraction)
    return read_label_csv(p / LABELS_CSV if p.is_dir() else p, max_bad_fraction)


# ---- labels and splits -----------------------------------------------------------------------------

def check_labels(task: NpzTask, source) -> None:
    """Every label is a valid class of the task kind, and every class in val/test is seen in training;
    the first bad label is named (split, index, value)."""
    k = task.n_classes
    if task.kind != "multilabel" and k < 2:
        raise DataFormatError(f"{source}: a {task.kind} task needs at least 2 classes, found {task.label_names}")
    for split in SPLITS:
        y = task.labels[split]
        if y.dtype.kind == "f" and not np.array_equal(y, np.round(y)) or y.dtype.kind not in "iufb":
            i = int(np.flatnonzero((y != np.round(y)).any(1))[0]) if y.dtype.kind == "f" else 0
            raise DataFormatError(f"{source}: {split}_labels[{i}] = {y[i].tolist()}: labels must be integers "
                                  f"(class ids{', 0/1 per label' if task.kind == 'multilabel' else ''})")
        hi = 1 if task.kind in ("binary", "multilabel") else k - 1
        bad = np.flatnonzero(((y < 0) | (y > hi)).any(1))
        if len(bad):
            i = int(bad[0])
            raise DataFormatError(f"{source}: {split}_labels[{i}] = {y[i].tolist()} is outside the {task.kind} "
                                  f"task's labels 0..{hi} ({_names(task.label_names)}); {len(bad)} such label(s)")
        if task.kind == "multilabel" and y.shape[1] != k:
            raise DataFormatError(f"{source}: {split}_labels has {y.shape[1]} columns for {k} label names")
    if task.kind == "multilabel":
        return
    seen = set(np.unique(task.labels["train"][:, 0]).tolist())
    for split in ("val", "test"):
        y = task.labels[split][:, 0]
        unseen = np.flatnonzero(~np.isin(y, list(seen)))
        if len(unseen):
            i = int(unseen[0])
            raise DataFormatError(f"{source}: {split} label {int(y[i])} ({task.label_names[int(y[i])]!r}, first at "
                                  f"{split} example {i}) never occurs in the training split; a model cannot learn it")
    missing = [task.label_names[c] for c in range(k) if c not in seen]
    if missing:
        log.warning("%s: class(es) %s declared but absent from the training split", source, missing[:10])


def _names(names: list[str]) -> str:
    return ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")


def _targets(labels: list[tuple[str, ...]], classes: list[str], multilabel: bool, source, split: str) -> np.ndarray:
    """(N, 1) class ids, or (N, L) multi-hot; a label not among the training classes fails naming it."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(labels), len(classes) if multilabel else 1), np.int64)
    for n, names in enumerate(labels):
        unknown = [c for c in names if c not in index]
        if unknown:
            raise DataFormatError(f"{source}: {split} example {n} has label {unknown[0]!r}, which never occurs in "
                                  f"the training split ({_names(classes)})")
        if multilabel:
            out[n, [index[c] for c in names]] = 1
        else:
            out[n, 0] = index[names[0]]
    return out


def _split_groups(ex: Examples, val_fraction: float, test_fraction: float, seed: int) -> tuple[dict, int]:
    """{split: example indices}, split by source file (slices of a volume stay together), exact duplicates dropped."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(ex.groups):
        members.setdefault(g, []).append(i)
    groups = list(members.values())
    splits = split_examples(len(groups), key=lambda i: [fingerprint(ex.images[j]) for j in groups[i]],
                            val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    parts = {"train": splits.train, "val": splits.val, "test": splits.test}
    return {s: [j for g in idx for j in groups[int(g)]] for s, idx in parts.items()}, splits.duplicates_dropped


def drop_copies(images: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> int:
    """Drop, in place, examples whose image is identical to one in a later-priority split (test > val > train)."""
    seen, dropped = set(), 0
    for split in ("test", "val", "train"):
        fps = [fingerprint(x) for x in images[split]]
        keep = np.array([fp not in seen for fp in fps], bool)
        seen.update(fps)
        dropped += int((~keep).sum())
        if not keep.all():
            images[split], labels[split] = images[split][keep], labels[split][keep]
    return dropped


# ---- one entry point -------------------------------------------------------------------------------

def offline_task(name: str, val_fraction: float = 0.1, seed: int = 0) -> NpzTask:
    """MNIST-5k or animals as a 3-split task: the held-out 20% by image index (split_indices, as the
    other recipes) is the test split; `val_fraction` of the rest is the validation split."""
    loader, names = OFFLINE[name]
    x, y = loader()
    train_idx, test_idx = split_indices(len(x), 0.2, seed)
    fit_idx, val_idx = (train_idx[i] for i in split_indices(len(train_idx), val_fraction, seed + 1))
    pick = {"train": fit_idx, "val": val_idx, "test": test_idx}
    return NpzTask({s: x[i] for s, i in pick.items()}, {s: y[i][:, None] for s, i in pick.items()},
                   "multiclass", list(names), name, format="built-in")


def _stored_splits(data: str, root) -> NpzTask:
    """A built-in name or a MedMNIST .npz: splits as stored, pixels scaled by the training split's dtype."""
    if data in OFFLINE:
        task = offline_task(data)
    elif data in BUILT:
        rel, command = BUILT[data]
        path = Path(root) / rel
        if not path.is_file():
            raise FileNotFoundError(f"--data {data}: {path} is missing; build it with: {command}")
        task = load_npz(path)
        task.format = "built-in"
    else:
        task = load_npz(data)
    scale = PixelScale.fit([task.images["train"]], [False], data)
    task.images = {s: scale.apply(x, source=f"{data} ({s})") for s, x in task.images.items()}
    task.chain = f"stored splits -> {scale.describe()}"
    check_labels(task, data)
    dropped = drop_copies(task.images, task.labels)
    _require_splits(task.labels, data, dropped)
    task.sizes = {**{s: len(task.labels[s]) for s in SPLITS}, "duplicates_dropped": dropped}
    return task


def _require_splits(labels: dict, source, dropped: int) -> None:
    empty = [s for s in SPLITS if len(labels[s]) == 0]
    if empty:
        raise DataFormatError(f"{source}: the {'/'.join(empty)} split(s) are empty ({dropped} exact duplicates of "
                              "images in other splits dropped); give more data, or --val-data / --test-data")


def load_labelled(data: str | os.PathLike, root: str | os.PathLike = ".", val_data=None, test_data=None,
                  size: int | None = None, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                  max_bad_fraction: float = 0.05) -> NpzTask:
    """A labelled-image task from any accepted path (FORMATS), detected and logged once with the format, the
    counts, the split sizes and the pixel chain. Without val_data / test_data those splits come from a
    deterministic split of `data` by `seed` (split_examples: exact duplicates dropped). `size` resizes images
    of folder formats when read (mixed sizes are resized to the most common one without it)."""
    text = os.fspath(data)
    fmt = detect(text)
    if fmt in ("built-in", "MedMNIST .npz"):
        if val_data is not None or test_data is not None:
            raise ValueError(f"--data {text}: a {fmt} carries its own val/test splits; --val-data and --test-data "
                             "go with an ImageFolder, CSV, DICOM or NIfTI folder")
        task = _stored_splits(text, root)
    else:
        task = _read_splits(text, fmt, val_data, test_data, size, val_fraction, test_fraction, seed, max_bad_fraction)
    log.info("labelled images: %s %s: %d examples, %d classes (%s), splits %s; chain: %s", fmt, text,
             sum(task.sizes[s] for s in SPLITS), task.n_classes, task.kind, task.sizes, task.chain)
    return task


def _read_splits(data, fmt, val_data, test_data, size, val_fraction, test_fraction, seed, max_bad_fraction) -> NpzTask:
    ex = read_examples(data, fmt, max_bad_fraction)
    given = {}
    for split, path in (("val", val_data), ("test", test_data)):
        if path is not None:
            other = detect(path)
            if other in ("built-in", "MedMNIST .npz"):
                raise ValueError(f"--{split}-data {path}: give an ImageFolder, CSV, DICOM or NIfTI folder like --data")
            given[split] = read_examples(path, other, max_bad_fraction)
    fractions = (0.0 if "val" in given else val_fraction, 0.0 if "test" in given else test_fraction)
    parts, dropped = _split_groups(ex, *fractions, seed)
    splits = {s: ex.select(idx) for s, idx in parts.items()} | given
    chain = Chain.fit(splits["train"], size, data)
    multilabel = any(len(lab) != 1 for e in splits.values() for lab in e.labels)
    classes = sorted({c for lab in splits["train"].labels for c in lab})
    images = {s: chain.apply(e, f"{data} ({s})") for s, e in splits.items()}
    labels = {s: _targets(e.labels, classes, multilabel, data, s) for s, e in splits.items()}
    dropped += drop_copies(images, labels) if given else 0
    _require_splits(labels, data, dropped)
    task = NpzTask(images, labels, "multilabel" if multilabel else "multiclass", classes, Path(data).stem, fmt)
    check_labels(task, data)
    task.sizes = {**{s: len(labels[s]) for s in SPLITS}, "duplicates_dropped": dropped,
                  "bad_files": len(ex.bad) + sum(len(e.bad) for e in given.values())}
    task.chain = chain.steps
    return task
