"""Segmentation volumes from real medical files, a spatial slab split, and 2-D slice datasets.

- `ct_bone`: the InVesalius example head CT (`Cranium.inv3`: a gzip tar of a plist and raw arrays), Hounsfield
  units scaled from a [-1000, 2000] HU window, and its bone mask (2 classes: background, bone).
- `brain_lobes`: the Colin27 T1 MRI (`ch2.nii.gz`) with the AAL atlas (`aal.nii.gz`) grouped into 7 lobes
  (LOBES; 8 classes with background), loaded and oriented (RAS) with MONAI's LoadImage/Orientation.

Both become a `SegVolume`: intensities (Z, H, W) float32 in [-1, 1] and labels (Z, H, W) int64, axis 0 the axial
(slab) axis. `slab_split` cuts axis 0 into train / val / test slabs with gaps; no slice is in two splits.
"""
from __future__ import annotations

import io
import logging
import plistlib
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

CT_PATH = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
MRI_DIR = Path("/usr/share/mricron/templates")
INSTALL = {"ct_bone": "apt-get update && apt-get install -y invesalius-examples",
           "brain_lobes": "apt-get update && apt-get install -y mricron-data"}
CT_WINDOW = (-1000.0, 2000.0)  # HU range scaled to [-1, 1]; the bone threshold (226 HU) lies inside it
# AAL region numbers (aal.nii.txt) -> 7 lobes; every one of the 116 regions in exactly one group
LOBES = {
    "frontal": [1, 2, *range(3, 29), 69, 70],  # precentral, frontal gyri, rolandic operculum, SMA, paracentral
    "parietal": [57, 58, *range(59, 69)],  # postcentral, superior/inferior parietal, supramarginal, angular, precuneus
    "temporal": list(range(79, 91)),  # Heschl, superior/middle/inferior temporal, temporal poles
    "occipital": list(range(43, 57)),  # calcarine, cuneus, lingual, occipital gyri, fusiform
    "limbic_insula": list(range(29, 43)),  # insula, cingulum, hippocampus, parahippocampal, amygdala
    "deep_grey": list(range(71, 79)),  # caudate, putamen, pallidum, thalamus
    "cerebellum": list(range(91, 117)),  # cerebellar hemispheres and vermis
}
DATASETS = ("ct_bone", "brain_lobes")


@dataclass
class SegVolume:
    """One labelled volume: image (Z, H, W) float32 in [-1, 1], labels (Z, H, W) int64 in [0, len(classes))."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    classes: list[str]  # classes[0] is the background
    spacing: tuple[float, float, float]  # mm along (Z, H, W)
    chain: str  # the reading/transform chain, in words (logged once)

    def __post_init__(self):
        if self.image.shape != self.labels.shape or self.image.ndim != 3:
            raise ValueError(f"{self.name}: image {self.image.shape} and labels {self.labels.shape} must be the same (Z, H, W)")
        if self.labels.min() < 0 or self.labels.max() >= len(self.classes):
            raise ValueError(f"{self.name}: labels outside [0, {len(self.classes)})")


def _require(path: Path, data: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (--data {data}); install it with:\n    {INSTALL[data]}")
    return path


def read_inv3(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray], tuple[float, float, float]]:
    """An InVesalius project: (volume (Z, H, W) int16 HU, {mask name: bool (Z, H, W)}, spacing (z, y, x) mm).
    InVesalius stores each mask one plane/row/column larger (index 0 holds its edit flags); that border is cut."""
    arrays, plists = {}, {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile():
                name = Path(member.name).name
                data = tar.extractfile(member).read()
                if name.endswith(".plist"):
                    plists[name] = plistlib.load(io.BytesIO(data))
                elif name.endswith(".dat"):
                    arrays[name] = data
    if "main.plist" not in plists:
        raise ValueError(f"{path}: not an InVesalius project (no main.plist)")
    main = plists["main.plist"]
    m = main["matrix"]
    volume = np.frombuffer(arrays[m["filename"]], dtype=m["dtype"]).reshape(m["shape"])
    masks = {}
    for key in sorted(main.get("masks", {})):
        meta = plists[main["masks"][key]]
        raw = np.frombuffer(arrays[meta["mask_file"]], dtype=np.uint8).reshape(meta["mask_shape"])
        masks[f"mask_{key}"] = raw[1:, 1:, 1:] > 127  # (Z, H, W) like the volume
    sx, sy, sz = main["spacing"]
    return volume, masks, (float(sz), float(sy), float(sx))


def _resize(stack: np.ndarray, size: int | None, labels: bool) -> np.ndarray:
    """(Z, H, W) -> (Z, size * H / max(H, W), ...) in-plane with MONAI's Resize (area for images, nearest labels)."""
    if size is None:
        return stack
    from monai.transforms import Resize

    h, w = stack.shape[1:]
    scale = size / max(h, w)
    shape = (max(1, round(h * scale)), max(1, round(w * scale)))
    out = Resize(shape, mode="nearest-exact" if labels else "area")(torch.from_numpy(stack))  # Z as channels
    return np.asarray(out)


def load_ct_bone(path: str | Path = CT_PATH, size: int | None = 128, mask: str = "mask_0") -> SegVolume:
    """The head CT and its bone mask; `size` resamples each axial slice so its longer side has `size` pixels."""
    from monai.transforms import ScaleIntensityRange

    volume, masks, spacing = read_inv3(_require(Path(path), "ct_bone"))
    if mask not in masks:
        raise ValueError(f"{path}: no {mask!r} (masks: {sorted(masks)})")
    scale = ScaleIntensityRange(*CT_WINDOW, b_min=-1.0, b_max=1.0, clip=True)
    image = _resize(np.asarray(scale(volume.astype(np.float32))), size, labels=False)
    labels = _resize(masks[mask].astype(np.uint8), size, labels=True).astype(np.int64)
    zoom = volume.shape[1] / image.shape[1]
    chain = (f"read_inv3 {Path(path).name} {volume.shape} HU -> ScaleIntensityRange{CT_WINDOW}->[-1,1] clip -> "
             f"Resize in-plane {image.shape[1:]} (area; labels nearest) -> {mask} as bone")
    return SegVolume("ct_bone", image.astype(np.float32), labels, ["background", "bone"],
                     (spacing[0], spacing[1] * zoom, spacing[2] * zoom), chain)


def lobe_lut() -> np.ndarray:
    """AAL region number (0-116) -> class index (0 background, 1.. the LOBES); checks each region is grouped once."""
    lut = np.zeros(117, dtype=np.int64)
    for g, regions in enumerate(LOBES.values(), start=1):
        lut[regions] = g
    if sorted(r for regions in LOBES.values() for r in regions) != list(range(1, 117)):
        raise ValueError("LOBES must group each AAL region 1..116 exactly once")
    return lut


def load_brain_lobes(folder: str | Path = MRI_DIR, size: int | None = 96) -> SegVolume:
    """Colin27 T1 + AAL lobes, RAS-oriented by MONAI, axial slices (axis 0 inferior -> superior) of `size` px."""
    from monai.transforms import LoadImage, Orientation, ScaleIntensityRangePercentiles

    folder = Path(folder)
    t1_path, aal_path = (_require(folder / n, "brain_lobes") for n in ("ch2.nii.gz", "aal.nii.gz"))
    load = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)
    orient = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))
    t1, aal = orient(load(str(t1_path))), orient(load(str(aal_path)))
    if t1.shape != aal.shape:
        raise ValueError(f"T1 {tuple(t1.shape)} and AAL {tuple(aal.shape)} are not on the same grid")
    t1 = ScaleIntensityRangePercentiles(0.5, 99.5, -1.0, 1.0, clip=True)(t1)
    spacing = tuple(float(s) for s in t1.pixdim)  # (R, A, S) mm
    image = np.asarray(t1[0]).transpose(2, 1, 0)[:, ::-1].copy()  # (X, Y, Z) -> (S, A->P rows, R cols)
    labels = lobe_lut()[np.asarray(aal[0]).astype(np.int64).transpose(2, 1, 0)[:, ::-1]]
    image = _resize(image, size, labels=False)
    labels = _resize(labels.astype(np.uint8), size, labels=True).astype(np.int64)
    zoom = t1.shape[2] / image.shape[1]
    chain = (f"LoadImage {t1_path.name} + {aal_path.name} -> Orientation RAS -> ScaleIntensityRangePercentiles"
             f"(0.5, 99.5)->[-1,1] -> axial slices, anterior up -> Resize {image.shape[1:]} (area; labels "
             f"nearest) -> AAL regions grouped into {len(LOBES)} lobes")
    return SegVolume("brain_lobes", image.astype(np.float32), labels, ["background", *LOBES],
                     (spacing[2], spacing[1] * zoom, spacing[0] * zoom), chain)


def load_volume(name: str, size: int | None = None, path: str | None = None) -> SegVolume:
    """--data NAME -> its SegVolume (default in-plane size: 128 px for ct_bone, 96 px for brain_lobes)."""
    if name == "ct_bone":
        return load_ct_bone(path or CT_PATH, size or 128)
    if name == "brain_lobes":
        return load_brain_lobes(path or MRI_DIR, size or 96)
    raise ValueError(f"--data {name!r}: expected one of {', '.join(DATASETS)}")


@dataclass
class SlabSplit:
    """Slabs along axis 0: a period is [train `train`][gap][held-out `held`][gap], the held-out slabs alternate
    val, test, val, ... Slices in gaps belong to no split; slices with no foreground are kept."""

    train: int = 12
    held: int = 6
    gap: int = 3

    def assign(self, n: int) -> np.ndarray:
        """Per slice: 0 train, 1 val, 2 test, -1 gap."""
        if min(self.train, self.held) < 1 or self.gap < 0:
            raise ValueError(f"slab sizes must be train >= 1, held >= 1, gap >= 0, got {self}")
        period = self.train + self.held + 2 * self.gap
        out = np.full(n, -1, dtype=np.int64)
        for z in range(n):
            k, p = divmod(z, period)
            if p < self.train:
                out[z] = 0
            elif self.train + self.gap <= p < self.train + self.gap + self.held:
                out[z] = 1 + k % 2
        return out

    def __call__(self, n: int) -> dict[str, np.ndarray]:
        part = self.assign(n)
        split = {s: np.flatnonzero(part == i) for i, s in enumerate(("train", "val", "test"))}
        empty = [s for s, z in split.items() if not len(z)]
        if empty:
            raise ValueError(f"{n} slices give no {', '.join(empty)} slab with {self}; use thinner slabs")
        return split


def slab_of(split: dict[str, np.ndarray]) -> dict[str, list[tuple[int, int]]]:
    """Each split's slabs as (first, last) slice runs: the leak test checks no run touches another split's."""
    runs = {}
    for s, z in split.items():
        breaks = np.flatnonzero(np.diff(z) > 1)
        starts, ends = np.r_[z[0], z[breaks + 1]], np.r_[z[breaks], z[-1]]
        runs[s] = list(zip(starts.tolist(), ends.tolist()))
    return runs


def _crop_transform(size: tuple[int, ...], flip: bool):
    """MONAI pad to `size`, a random crop of `size`, and (flip) a random left-right flip (the last axis)."""
    from monai.transforms import Compose, RandFlipd, RandSpatialCropd, SpatialPadd

    keys = ("image", "label")
    steps = [SpatialPadd(keys, size), RandSpatialCropd(keys, size, random_size=False)]
    return Compose(steps + ([RandFlipd(keys, prob=0.5, spatial_axis=len(size) - 1)] if flip else []))


def _cut(vol: SegVolume, z, transform) -> tuple[torch.Tensor, torch.Tensor]:
    """Slice(s) z of the volume's image and labels with a channel axis, through `transform` -> (image, labels)."""
    item = {"image": torch.from_numpy(vol.image[z][None]),  # (1, H, W) or (1, depth, H, W)
            "label": torch.from_numpy(vol.labels[z][None])}
    out = transform(item)
    return torch.as_tensor(out["image"]).float(), torch.as_tensor(out["label"]).long()


class SliceSet(torch.utils.data.Dataset):
    """Training slices as (image (1, roi, roi), labels (1, roi, roi)): MONAI pad to the roi, random crop and random
    left-right flip; `repeat` passes over the slices per epoch."""

    def __init__(self, vol: SegVolume, slices: np.ndarray, roi: int, repeat: int = 1, flip: bool = True):
        self.vol, self.slices, self.repeat = vol, np.asarray(slices), repeat
        self.transform = _crop_transform((roi, roi), flip)

    def __len__(self):
        return len(self.slices) * self.repeat

    def __getitem__(self, i):
        return _cut(self.vol, self.slices[i % len(self.slices)], self.transform)


class CropSet3d(torch.utils.data.Dataset):
    """Training crops (image (1, depth, roi, roi), labels (1, depth, roi, roi)) of `depth` consecutive slices inside
    ONE training slab (a crop never spans a gap or reaches a held-out slab): item i is start position
    i % positions, then MONAI pad to the roi, a random in-plane crop and a random left-right flip; `repeat` passes
    over the start positions per epoch."""

    def __init__(self, vol: SegVolume, slices: np.ndarray, roi: int, depth: int, repeat: int = 1, flip: bool = True):
        runs = slab_of({"train": np.asarray(slices)})["train"]
        self.starts = np.array([z for first, last in runs for z in range(first, last - depth + 2)], dtype=np.int64)
        if not len(self.starts):
            thickest = max(last - first + 1 for first, last in runs)
            raise ValueError(f"roi_depth={depth}: thicker than every training slab (at most {thickest} slices); "
                             f"use a smaller roi_depth or a larger train_slab")
        self.vol, self.depth, self.repeat = vol, depth, repeat
        self.transform = _crop_transform((depth, roi, roi), flip)

    def __len__(self):
        return len(self.starts) * self.repeat

    def slices(self, i: int) -> np.ndarray:
        """The slice numbers item i is cut from."""
        z = self.starts[i % len(self.starts)]
        return np.arange(z, z + self.depth)

    def __getitem__(self, i):
        return _cut(self.vol, self.slices(i), self.transform)
