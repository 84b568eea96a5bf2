"""Brain-region classification of 2-D MRI patches: Colin27 T1 (one subject) labelled by the AAL atlas.

    apt-get update && apt-get install -y mricron-data      # Debian: the template and atlas, offline
    python datasets/brain_mri_patches.py                   # -> data/brain_mri_patches.npz (MedMNIST layout)

Each sample is an axial 64 x 64 mm patch of the T1 image (1 mm voxels, downsampled 2x to 32 x 32,
uint8); its label is the lobe-level group (8 classes, GROUPS) of the AAL region at the patch
centre. Splits are spatial: axial slabs of TRAIN_SLICES slices are training, separated by GAP
slices from HELD_SLICES-thick held-out slabs; in held-out slabs the left hemisphere is the
validation split and the right hemisphere the test split. See datasets/BRAIN_MRI.md.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mmfm.data.medical import read_nifti, save_npz  # noqa: E402

log = logging.getLogger("brain_mri_patches")
TEMPLATES = Path("/usr/share/mricron/templates")
INSTALL = "apt-get update && apt-get install -y mricron-data"
# AAL region numbers (aal.nii.txt) -> 8 lobe-level groups
GROUPS = {
    "frontal": [*range(3, 17), *range(19, 29)],  # frontal gyri, orbital, SMA, olfactory, medial, rectus
    "central": [1, 2, 17, 18, 57, 58, 69, 70],  # pre/postcentral, rolandic operculum, paracentral lobule
    "parietal": list(range(59, 69)),  # superior/inferior parietal, supramarginal, angular, precuneus
    "temporal": list(range(79, 91)),  # Heschl, superior/middle/inferior temporal, temporal poles
    "occipital": list(range(43, 57)),  # calcarine, cuneus, lingual, occipital gyri, fusiform
    "limbic_insula": list(range(29, 43)),  # insula, cingulum, hippocampus, parahippocampal, amygdala
    "deep_grey": list(range(71, 79)),  # caudate, putamen, pallidum, thalamus
    "cerebellum": list(range(91, 117)),  # cerebellar hemispheres and vermis
}
PATCH_MM, OUT_PX = 64, 32
TRAIN_SLICES, GAP, HELD_SLICES = 14, 5, 6  # one period = train + gap + held-out + gap = 30 slices
STRIDE = 6  # in-plane spacing of patch centres (mm)


def require(path: Path) -> Path:
    if not path.is_file():
        raise SystemExit(f"{path} not found. The Colin27 template and AAL atlas come from the Debian package "
                         f"mricron-data; install it with:\n    {INSTALL}")
    return path


def group_lut(names: list[str]) -> np.ndarray:
    """AAL region number -> group index (-1: unlabelled); checks every region is grouped once."""
    lut = np.full(117, -1, dtype=np.int64)
    for g, regions in enumerate(GROUPS.values()):
        lut[regions] = g
    missing = [names[i - 1] for i in range(1, 117) if lut[i] < 0]
    if missing or sum(map(len, GROUPS.values())) != 116:
        raise ValueError(f"AAL grouping incomplete or overlapping; ungrouped: {missing}")
    return lut


def split_of_slice(z: int, z0: int) -> str:
    """'train', 'held' or 'gap' for axial slice z, in periods starting at z0."""
    p = (z - z0) % (TRAIN_SLICES + 2 * GAP + HELD_SLICES)
    if p < TRAIN_SLICES:
        return "train"
    if TRAIN_SLICES + GAP <= p < TRAIN_SLICES + GAP + HELD_SLICES:
        return "held"
    return "gap"


def patches_of_slice(t1: np.ndarray, groups: np.ndarray, z: int, centres_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axial patches around (x, y) centres of slice z -> uint8 (n, OUT_PX, OUT_PX) and group labels (n,)."""
    h = PATCH_MM // 2
    padded = np.pad(t1[:, :, z], h)  # (X + 2h, Y + 2h), zero outside the head
    crops = np.stack([padded[x:x + 2 * h, y:y + 2 * h] for x, y in centres_xy])  # (n, 64, 64), centre at +h
    crops = np.flip(crops.transpose(0, 2, 1), 1)  # (n, y, x): anterior at the top, patient's right on the right
    small = F.interpolate(torch.from_numpy(crops.copy()).float()[:, None], size=(OUT_PX, OUT_PX), mode="area")
    return small[:, 0].round().clamp(0, 255).byte().numpy(), groups[centres_xy[:, 0], centres_xy[:, 1], z]


def build(out: Path, train_slice_step: int = 2) -> dict:
    t1, aff_t1 = read_nifti(require(TEMPLATES / "ch2.nii.gz"))
    atlas, aff_atlas = read_nifti(require(TEMPLATES / "aal.nii.gz"))
    names = [line.split()[1] for line in require(TEMPLATES / "aal.nii.txt").read_text().splitlines() if line.strip()]
    if t1.shape != atlas.shape or not np.allclose(aff_t1, aff_atlas):
        raise ValueError("ch2 and aal are expected on the same 1 mm grid")
    groups = np.where(atlas > 0, group_lut(names)[atlas.astype(np.int64)], -1)  # (X, Y, Z)
    t1 = np.clip(t1, 0, 255)
    zs = np.nonzero((groups >= 0).any((0, 1)))[0]
    x_mid = int(round(np.linalg.inv(aff_t1)[0] @ [0, 0, 0, 1]))  # voxel x of the midline (world x = 0)
    grid = np.zeros(t1.shape[:2], bool)
    grid[::STRIDE, ::STRIDE] = True
    images, labels = {s: [] for s in ("train", "val", "test")}, {s: [] for s in ("train", "val", "test")}
    for z in zs:
        part = split_of_slice(z, zs[0])
        if part == "gap" or (part == "train" and (z - zs[0]) % train_slice_step):
            continue
        centres = np.argwhere(grid & (groups[:, :, z] >= 0))  # (n, 2) voxel (x, y)
        x, y = patches_of_slice(t1, groups, z, centres)
        if part == "train":
            images["train"].append(x), labels["train"].append(y)
        else:  # RAS: voxel x above the midline is the patient's right hemisphere
            right = centres[:, 0] > x_mid
            images["test"].append(x[right]), labels["test"].append(y[right])
            images["val"].append(x[~right]), labels["val"].append(y[~right])
    images = {s: np.concatenate(v) for s, v in images.items()}
    labels = {s: np.concatenate(v)[:, None].astype(np.int64) for s, v in labels.items()}  # (N, 1)
    save_npz(out, images, labels, "multiclass", list(GROUPS))
    return {s: np.bincount(labels[s][:, 0], minlength=len(GROUPS)).tolist() for s in labels}


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/brain_mri_patches.npz")
    p.add_argument("--train-slice-step", type=int, default=2, help="use every n-th slice of the training slabs")
    a = p.parse_args(argv)
    counts = build(Path(a.out), a.train_slice_step)
    log.info("wrote %s; classes %s", a.out, list(GROUPS))
    for split, c in counts.items():
        log.info("%5s: %6d patches, per class %s", split, sum(c), c)


if __name__ == "__main__":
    main()
