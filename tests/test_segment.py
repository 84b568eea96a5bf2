"""2-D segmentation (mmfm.seg, recipes/segment.py): slab split, UNETR on an mmfm ViT, Dice, and the recipe end to end
on synthetic volumes written in the real formats (an InVesalius .inv3 project, NIfTI T1 + AAL label files)."""
from __future__ import annotations

import importlib.util
import io
import json
import plistlib
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfm.registry import build_model
from mmfm.seg import (LOBES, SlabSplit, UNETRConfig, build_unetr, dice_per_class, load_segmenter, load_volume,
                      lobe_lut, predict_slices, read_inv3, slab_of)

ROOT = Path(__file__).resolve().parents[1]


def _recipe():
    spec = importlib.util.spec_from_file_location("segment_recipe", ROOT / "recipes" / "segment.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def write_inv3(path: Path, volume: np.ndarray, mask: np.ndarray) -> Path:
    """An InVesalius project as the app writes it: gzip tar of main.plist, mask_0.plist and raw arrays; the mask
    one plane/row/column larger, its index-0 border holding flags."""
    z, h, w = volume.shape
    raw = np.zeros((z + 1, h + 1, w + 1), np.uint8)
    raw[0, 0, 5] = raw[0, 5, 0] = 1  # edit flags on the border, which the reader must drop
    raw[1:, 1:, 1:] = mask.astype(np.uint8) * 255
    files = {
        "main.plist": plistlib.dumps({"matrix": {"dtype": "int16", "filename": "matrix.dat", "shape": [z, h, w]},
                                      "masks": {"0": "mask_0.plist"}, "modality": "CT",
                                      "spacing": [0.9, 0.9, 1.5]}),
        "mask_0.plist": plistlib.dumps({"mask_file": "mask_0.dat", "mask_shape": [z + 1, h + 1, w + 1]}),
        "matrix.dat": volume.astype(np.int16).tobytes(), "mask_0.dat": raw.tobytes()}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"tmpproj/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def synthetic_ct(n: int = 30, side: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A head-like phantom: air, a soft-tissue disc, a bone ring (800 HU) of varying radius; mask = HU >= 226."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side] - side / 2
    r = np.hypot(yy, xx)
    vol = np.full((n, side, side), -1000.0)
    for z in range(n):
        outer = side * (0.35 + 0.08 * np.sin(z / 5))
        vol[z][r < outer] = 40
        vol[z][(r < outer) & (r > outer - 3)] = 800
    vol += rng.normal(0, 30, vol.shape)
    return vol.astype(np.int16), vol >= 226


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory) -> Path:
    vol, mask = synthetic_ct()
    return write_inv3(tmp_path_factory.mktemp("ct") / "Cranium.inv3", vol, mask)


@pytest.fixture(scope="module")
def mri_dir(tmp_path_factory) -> Path:
    """ch2.nii.gz + aal.nii.gz on one grid (RAS, 2 mm): regions in bands so every lobe appears."""
    import nibabel as nib  # in the data extra, which dev installs: a broken install fails here
    folder = tmp_path_factory.mktemp("mri")
    shape = (24, 28, 30)  # (R, A, S)
    x, y, z = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    brain = ((x - 12) / 10) ** 2 + ((y - 14) / 12) ** 2 + ((z - 15) / 13) ** 2 < 1
    regions = np.array([r[0] for r in LOBES.values()])
    aal = np.where(brain, regions[(y * len(regions)) // shape[1]], 0).astype(np.int16)
    t1 = (brain * (60 + 10 * (aal % 7)) + np.random.default_rng(0).normal(0, 3, shape)).astype(np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(t1, affine), str(folder / "ch2.nii.gz"))
    nib.save(nib.Nifti1Image(aal, affine), str(folder / "aal.nii.gz"))
    return folder


@pytest.mark.parametrize("n,train,held,gap", [(108, 12, 6, 3), (181, 12, 6, 3), (30, 4, 2, 1), (57, 5, 3, 0)])
def test_split_leaks_no_slab(n, train, held, gap):
    split = SlabSplit(train, held, gap)(n)
    names = list(split)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not set(split[a]) & set(split[b])
            # slices of different splits are at least gap + 1 apart: a gap separates every pair of slabs
            dist = np.abs(split[a][:, None] - split[b][None, :]).min()
            assert dist >= gap + 1, (a, b, dist)
    runs = slab_of(split)
    assert all(last - first + 1 <= train for first, last in runs["train"])
    assert all(last - first + 1 <= held for s in ("val", "test") for first, last in runs[s])
    assert len(runs["val"]) >= 1 and len(runs["test"]) >= 1


def test_split_refuses_too_few_slices():
    with pytest.raises(ValueError, match="no test"):
        SlabSplit(12, 6, 3)(30)


@pytest.mark.parametrize("patch,shape", [(8, (2, 1, 32, 32)), (4, (1, 1, 16, 24))])
def test_unetr_shape_and_every_parameter_learns(patch, shape):
    torch.manual_seed(0)
    vit = build_model("vit-test", img_size=32, patch_size=patch, in_chans=1, num_classes=0)
    model = build_unetr(UNETRConfig(num_classes=3, feature_size=8), vit)
    x = torch.randn(shape)
    logits = model(x)
    assert logits.shape == (shape[0], 3, *shape[2:])
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 3, (shape[0], *shape[2:]))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_unetr_refuses_patch_not_power_of_two():
    vit = build_model("vit-test", img_size=30, patch_size=6, in_chans=1, num_classes=0)
    with pytest.raises(ValueError, match="power of two"):
        build_unetr(UNETRConfig(num_classes=2), vit)


def test_dice_against_hand_computed():
    labels = np.zeros((1, 4, 4), np.int64)
    pred = np.zeros((1, 4, 4), np.int64)
    labels[0, 0, :2] = 1  # class 1: truth 2 px, prediction 3 px, 2 shared -> 2 * 2 / (2 + 3) = 0.8
    pred[0, 0, :3] = 1
    labels[0, 3, 0] = 3  # class 3: in the truth only -> 0; class 2 absent from both -> left out
    assert dice_per_class(pred, labels, ["bg", "a", "b", "c"]) == {"a": 0.8, "c": 0.0}


def test_read_inv3_cuts_flag_border(ct_file):
    vol, mask = synthetic_ct()
    volume, masks, spacing = read_inv3(ct_file)
    assert np.array_equal(volume, vol) and np.array_equal(masks["mask_0"], mask)
    assert spacing == (1.5, 0.9, 0.9)


def test_lobe_grouping_covers_aal_once():
    lut = lobe_lut()
    assert lut[0] == 0 and (lut[1:] >= 1).all() and set(lut[1:]) == set(range(1, len(LOBES) + 1))


def test_brain_lobes_reader(mri_dir):
    vol = load_volume("brain_lobes", size=28, path=str(mri_dir))
    assert vol.image.shape == (30, 28, 24)  # (S, A, R): axial slices, anterior up
    assert set(np.unique(vol.labels)) == set(range(len(LOBES) + 1))
    assert vol.image.min() >= -1 and vol.image.max() <= 1


def test_missing_data_names_the_package(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y invesalius-examples"):
        load_volume("ct_bone", path=str(tmp_path / "nope.inv3"))


SMALL = ["dim=32", "depth=2", "n_heads=2", "roi=32", "batch_size=4", "warmup_steps=2", "train_slab=4",
         "held_slab=2", "gap=1", "feature_size=8", "progress=false"]


def test_recipe_ct_bone_end_to_end(ct_file, tmp_path):
    out = tmp_path / "ct"
    m = _recipe().main(["--data", "ct_bone", "--max-steps", "4", "--out", str(out), f"path={ct_file}", "size=32",
                        *SMALL])
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("test/dice", "test/dice/bone", "baseline/dice", "baseline/dice/bone", "val/dice"):
        assert key in saved and 0.0 <= saved[key] <= 1.0, key
    assert saved["test/dice"] == m["test/dice"]
    for f in ("overlay.png", "unetr/loss.png", "baseline/loss.png", "model/segmenter.json",
              "baseline/model.safetensors"):
        assert (out / f).is_file(), f
    model, meta = load_segmenter(out / "model")
    vol = load_volume("ct_bone", size=32, path=str(ct_file))
    z = SlabSplit(4, 2, 1)(len(vol.image))["test"]
    pred = predict_slices(model, vol.image[z], 32)
    assert dice_per_class(pred, vol.labels[z], meta["classes"])["bone"] == saved["test/dice/bone"]


def test_recipe_brain_lobes_end_to_end(mri_dir, tmp_path):
    out = tmp_path / "brain"
    _recipe().main(["--data", "brain_lobes", "--max-steps", "2", "--out", str(out), f"path={mri_dir}", "size=28",
                    "baseline=false", *SMALL])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["classes"] == ["background", *LOBES]
    lobes = [k for k in saved if k.startswith("test/dice/")]
    assert lobes and all(k.split("/")[-1] in LOBES for k in lobes)
    assert not any(k.startswith("baseline/") for k in saved)
