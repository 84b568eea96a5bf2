"""Medical image formats: the MedMNIST .npz layout, DICOM (pydicom) and NIfTI (nibabel).

MedMNIST metadata (task kind, label names, channels) comes from `medmnist.INFO`, read from the
installed package's `info.py` by path: nothing is downloaded and medmnist's own loader (which
asserts the official sample counts) is never used.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
TASK_KINDS = ("multiclass", "binary", "multilabel", "ordinal")
# medmnist.INFO's task strings -> mmfm task kinds
MEDMNIST_TASKS = {"multi-class": "multiclass", "binary-class": "binary",
                  "multi-label, binary-class": "multilabel", "ordinal-regression": "ordinal"}


def medmnist_info() -> dict:
    """`medmnist.INFO` (flag -> metadata), loaded from medmnist/info.py without importing medmnist's datasets."""
    from .sources import package_dir

    path = package_dir("medmnist") / "info.py"
    spec = importlib.util.spec_from_file_location("_medmnist_info", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.INFO


@dataclass
class NpzTask:
    """A labelled image task in the MedMNIST layout: per split uint8 images (N, H, W) or (N, H, W, C)
    and integer labels (N, L) (L = 1, or the number of labels for multi-label)."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    kind: str
    label_names: list[str]
    name: str = ""
    format: str = "npz"  # the layout it was read from (mmfm.data.labelled names them)
    sizes: dict[str, int] = field(default_factory=dict)  # split sizes and duplicates dropped (metrics.json)
    chain: str = ""  # the pixel chain, in words, as logged once

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    @property
    def n_channels(self) -> int:
        x = self.images["train"]
        return 1 if x.ndim == 3 else x.shape[-1]

    def targets(self, split: str) -> torch.Tensor:
        """Labels as the loss wants them: (N,) int64 class ids, or (N, L) float multi-hot for multi-label."""
        y = self.labels[split]
        if self.kind == "multilabel":
            return torch.from_numpy(y.astype(np.float32))
        return torch.from_numpy(y.reshape(len(y), -1)[:, 0].astype(np.int64))


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float (N, C, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div(127.5).sub(1.0)
    return x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W)


def _flag_from_name(path: Path) -> str:
    """'pathmnist.npz' / 'pathmnist_64.npz' -> 'pathmnist'."""
    stem = path.stem.lower()
    return stem.rsplit("_", 1)[0] if stem.rsplit("_", 1)[-1].isdigit() else stem


def _metadata(path: Path, arrays, flag: str | None, train_labels: np.ndarray) -> tuple[str, list[str], str]:
    """(kind, label names, name): from keys `task` / `label_names` stored in the file, else
    medmnist.INFO[flag] (flag from the argument or the file name), else multi-class over the labels seen."""
    if "task" in arrays and "label_names" in arrays:
        return str(arrays["task"]), [str(s) for s in arrays["label_names"]], flag or path.stem
    flag = flag or _flag_from_name(path)
    info = medmnist_info()
    if flag in info:
        meta = info[flag]
        names = [meta["label"][k] for k in sorted(meta["label"], key=int)]
        return MEDMNIST_TASKS[meta["task"]], names, flag
    if flag is not None and flag != _flag_from_name(path):
        raise ValueError(f"unknown MedMNIST flag {flag!r}; known: {sorted(info)}")
    n = int(train_labels.max()) + 1
    log.info("%s: no task metadata and no medmnist.INFO entry; assuming multi-class over %d labels", path, n)
    return "multiclass", [str(i) for i in range(n)], path.stem


def load_npz(path: str | os.PathLike, flag: str | None = None) -> NpzTask:
    """Read a MedMNIST-layout .npz ({train,val,test}_{images,labels}); no pickles are loaded."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no .npz file at {path}")
    with np.load(path, allow_pickle=False) as arrays:
        missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in arrays]
        if missing:
            raise ValueError(f"{path} lacks {missing}: the MedMNIST layout has {{train,val,test}}_{{images,labels}}")
        images = {s: arrays[f"{s}_images"] for s in SPLITS}
        labels = {s: _label_rows(path, s, arrays[f"{s}_labels"], images[s]) for s in SPLITS}  # (N, L)
        kind, names, name = _metadata(path, arrays, flag, labels["train"])
    if any(y.shape[1] > 1 for y in labels.values()) and kind != "multilabel":
        width = max(y.shape[1] for y in labels.values())
        raise ValueError(f"{path}: labels have {width} columns per image but the task is {kind}: one label per "
                         "image expected (several columns only for a multi-label task)")
    if kind not in TASK_KINDS:
        raise ValueError(f"task kind {kind!r} not in {TASK_KINDS}")
    return NpzTask(images, labels, kind, names, name)


def _label_rows(path: Path, split: str, labels: np.ndarray, images: np.ndarray) -> np.ndarray:
    """A split's labels as (N, L) rows, one per image; a count that does not match the images fails."""
    if images.ndim not in (3, 4):
        raise ValueError(f"{path}: {split}_images has shape {images.shape}; expected (N, H, W) or (N, H, W, C)")
    if labels.ndim == 0 or labels.ndim > 2 or labels.shape[0] != len(images):
        raise ValueError(f"{path}: {split}_labels has shape {labels.shape} for {len(images)} images in "
                         f"{split}_images; expected ({len(images)},) or ({len(images)}, L)")
    return labels.reshape(len(images), -1)


def save_npz(path: str | os.PathLike, images: dict, labels: dict, kind: str | None = None,
             label_names: list[str] | None = None) -> Path:
    """Write the MedMNIST layout (+ optional `task` and `label_names` keys that load_npz reads first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{s}_{k}": d[s] for s in SPLITS for k, d in (("images", images), ("labels", labels))}
    if kind is not None:
        arrays["task"] = np.array(kind)
        arrays["label_names"] = np.array(label_names)
    np.savez_compressed(path, **arrays)
    return path


# ---- DICOM -------------------------------------------------------------------------------------

def dicom_to_array(ds) -> np.ndarray:
    """Pixel data of a pydicom Dataset in real units (HU for CT): pixels * RescaleSlope + RescaleIntercept."""
    pixels = ds.pixel_array.astype(np.float32)
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    return pixels * slope + intercept


def read_dicom(path: str | os.PathLike) -> np.ndarray:
    """One DICOM file -> float32 (H, W) (or (frames, H, W)) in real units."""
    import pydicom

    return dicom_to_array(pydicom.dcmread(path))


def window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Intensity window (e.g. HU brain 40/80, bone 400/1800, lung -600/1500) -> float32 in [0, 1]."""
    if width <= 0:
        raise ValueError(f"window width must be > 0, got {width}")
    lo = center - width / 2
    return np.clip((values - lo) / width, 0.0, 1.0).astype(np.float32)


def scale_intensity_range(values: np.ndarray, a_min: float, a_max: float, b_min: float = 0.0, b_max: float = 1.0,
                          clip: bool = True) -> np.ndarray:
    """MONAI's ScaleIntensityRange: [a_min, a_max] -> [b_min, b_max] linearly (clipped), float32."""
    if not a_max > a_min:
        raise ValueError(f"intensity range needs a_max > a_min, got [{a_min}, {a_max}]")
    out = (np.asarray(values, np.float32) - a_min) / (a_max - a_min) * (b_max - b_min) + b_min
    return np.clip(out, min(b_min, b_max), max(b_min, b_max)) if clip else out


def dicom_window(ds) -> tuple[float, float] | None:
    """(center, width) of a DICOM's first VOI window (WindowCenter/WindowWidth), or None when it has none."""
    center, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if center is None or width is None:
        return None
    center, width = _first(center), _first(width)
    return (center, width) if width > 0 else None


def _first(value) -> float:
    """A DICOM value that may be multi-valued (several windows): its first entry as a float."""
    return float(value[0]) if isinstance(value, Sequence) and not isinstance(value, str) else float(value)


def _slice_position(ds) -> float:
    """Distance of a slice along its normal (ImagePositionPatient . normal); InstanceNumber as a fallback."""
    pos, orient = getattr(ds, "ImagePositionPatient", None), getattr(ds, "ImageOrientationPatient", None)
    if pos is not None and orient is not None:
        row, col = np.asarray(orient[:3], float), np.asarray(orient[3:], float)
        return float(np.dot(np.cross(row, col), np.asarray(pos, float)))
    if pos is not None:
        return float(pos[2])
    return float(getattr(ds, "InstanceNumber", 0))


def read_dicom_series(folder: str | os.PathLike, pattern: str = "*") -> tuple[np.ndarray, list[float]]:
    """Every DICOM file in `folder` of one series -> (volume (Z, H, W) float32 in real units, positions)
    with slices sorted by position along the slice normal."""
    import pydicom

    files = [p for p in sorted(Path(folder).glob(pattern)) if p.is_file()]
    slices = []
    for p in files:
        try:
            slices.append(pydicom.dcmread(p))
        except pydicom.errors.InvalidDicomError:
            log.info("skipping %s: not DICOM", p)
    if not slices:
        raise FileNotFoundError(f"no DICOM files in {folder}")
    series = {getattr(s, "SeriesInstanceUID", None) for s in slices}
    if len(series) > 1:
        raise ValueError(f"{folder} holds {len(series)} series; give a folder with one")
    slices.sort(key=_slice_position)
    volume = np.stack([dicom_to_array(s) for s in slices])  # (Z, H, W)
    return volume, [_slice_position(s) for s in slices]


# ---- NIfTI -------------------------------------------------------------------------------------

def read_nifti(path: str | os.PathLike, canonical: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI volume -> (array float32 (X, Y, Z[, ...]), affine (4, 4)); `canonical` reorients to RAS+."""
    import nibabel as nib

    img = nib.load(str(path))
    if canonical:
        img = nib.as_closest_canonical(img)
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


def nifti_slices(volume: np.ndarray, axis: int = 2, step: int = 1) -> np.ndarray:
    """2-D slices of a 3-D volume along `axis` (2 = axial in RAS): (n_slices, H, W)."""
    if volume.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {volume.shape}")
    return np.moveaxis(volume, axis, 0)[::step]  # (Z, H, W) for axis=2
