"""recipes/finetune.py (and vit_classify, label_efficiency) trained for a few steps on a user's own files in every
accepted layout: ImageFolder, CSV (multi-label), DICOM + labels.csv, NIfTI + labels.csv; uint8 and float [0, 1]
copies of one task train alike; bad input stops before --out is written; img_size= reaches the backbone; DDP."""
import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_labelled_data import band_image, write_csv, write_image_folder

import mmfm
from mmfm.adapt.data import load_task
from mmfm.data.formats import DataFormatError
from mmfm.data.medical import save_npz, window

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--max-steps", "2", "val_every=1", "batch_size=8", "progress=false"]


def _recipe(name):
    key = f"{name}_recipe"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "recipes" / f"{name}.py")
        sys.modules[key] = importlib.util.module_from_spec(spec)  # dataclasses need the module registered
        spec.loader.exec_module(sys.modules[key])
    return sys.modules[key]


def write_dicom(path, hu: np.ndarray, window_cw=(40.0, 400.0)):
    """A minimal CT DICOM: signed stored values, rescale intercept -1024, optional VOI window."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = hu.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    if window_cw:
        ds.WindowCenter, ds.WindowWidth = window_cw
    ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def dicom_folder(root, n=12, windowed=True):
    root.mkdir(parents=True)
    rows = []
    for i in range(n):
        c = i % 2
        hu = band_image(c, seed=i).astype(np.int16) * 2 - 100  # -100..320 HU
        write_dicom(root / f"ct_{i:02d}.dcm", hu, (40.0, 400.0) if windowed else None)
        rows.append((f"ct_{i:02d}.dcm", ["normal", "bleed"][c]))
    write_csv(root, rows)
    return root


def nifti_folder(root, n=6, depth=3):
    import nibabel as nib

    root.mkdir(parents=True)
    rows = []
    for i in range(n):
        c = i % 2
        vol = np.stack([band_image(c, seed=10 * i + z).astype(np.int16) * 4 for z in range(depth)], -1)  # (X, Y, Z)
        nib.Nifti1Image(vol, np.eye(4)).to_filename(root / f"sub{i:02d}.nii.gz")
        rows.append((f"sub{i:02d}.nii.gz", ["control", "patient"][c]))
    write_csv(root, rows)
    return root


def test_dicom_window_from_header_and_volumes_grouped(tmp_path):
    task = load_task(dicom_folder(tmp_path / "ct"), val_fraction=0.2, test_fraction=0.2)
    assert task.format == "DICOM folder" and task.label_names == ["bleed", "normal"]
    assert "DICOM window" in task.chain and task.images["train"].dtype == np.float32
    hu = band_image(0, seed=0).astype(np.float32) * 2 - 100
    expected = window(hu, 40.0, 400.0)
    assert any(np.allclose(x, expected, atol=1e-6) for s in task.images for x in task.images[s])
    plain = load_task(dicom_folder(tmp_path / "ct_plain", windowed=False))
    assert "intensity range" in plain.chain and 0 <= plain.images["train"].min() < plain.images["train"].max() <= 1
    vols = load_task(nifti_folder(tmp_path / "nii"), val_fraction=0.2, test_fraction=0.2)
    assert vols.format == "NIfTI folder" and sum(vols.sizes[s] for s in ("train", "val", "test")) == 18
    assert all(vols.sizes[s] % 3 == 0 for s in ("train", "val", "test"))  # the slices of a volume stay together


@pytest.mark.parametrize("layout", ["imagefolder", "csv_multilabel", "dicom", "nifti"])
def test_finetune_trains_on_each_layout(tmp_path, layout):
    if layout == "imagefolder":
        data = write_image_folder(tmp_path / "xrays")
    elif layout == "csv_multilabel":
        (tmp_path / "img").mkdir()
        rows = []
        for i in range(24):
            Image.fromarray(band_image(i % 3, seed=i)).save(tmp_path / "img" / f"{i}.png")
            rows.append((f"img/{i}.png", ["a", "b", "a|b"][i % 3]))
        data = write_csv(tmp_path, rows, "pairs.csv")
    elif layout == "dicom":
        data = dicom_folder(tmp_path / "ct", n=16)
    else:
        data = nifti_folder(tmp_path / "nii")
    out = tmp_path / "run"
    metrics = _recipe("finetune").main(["--init", "vit-test", "--data", str(data), "--method", "full",
                                        "--out", str(out), *FAST])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["steps"] == 2 and saved["split/train"] == metrics["n_train"] > 0
    assert 0 <= saved["test/balanced_accuracy"] <= 1 and saved["kind"] == ("multilabel" if "multi" in layout else "multiclass")
    assert mmfm.build_model(out / "model").config.num_classes == (2 if layout != "imagefolder" else 3)


def test_issue_command_lora_on_image_folder_with_saved_init(tmp_path, monkeypatch, caplog):
    """`python recipes/finetune.py --init runs/clip/model --data my_xrays/ --method lora`, with a tiny saved CLIP."""
    init = mmfm.build_model("clip-test").save_pretrained(tmp_path / "runs" / "clip" / "model")
    data = write_image_folder(tmp_path / "my_xrays", classes=("normal", "pneumonia"), per_class=10, size=20)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO):
        _recipe("finetune").main(["--init", "runs/clip/model", "--data", "my_xrays/", "--method", "lora",
                                  "--out", "out", "lora_rank=2", *FAST])
    assert "labelled images: ImageFolder my_xrays/: 20 examples, 2 classes" in caplog.text
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["method"] == "lora" and saved["format"] == "ImageFolder" and data.is_dir() and init.is_dir()


def test_uint8_and_float_copies_train_alike(tmp_path):
    """The same images stored as uint8 and as float in [0, 1] reach the same accuracy (before: 1.0 vs 0.5)."""
    r = np.random.default_rng(0)
    images, labels = {}, {}
    for split, n in (("train", 40), ("val", 12), ("test", 12)):
        y = r.integers(0, 2, n)
        images[split] = np.stack([band_image(2 * c, seed=int(r.integers(1 << 30))) for c in y])
        labels[split] = y
    u8 = save_npz(tmp_path / "u8.npz", images, labels, "binary", ["no", "yes"])
    f32 = save_npz(tmp_path / "f32.npz", {s: x.astype(np.float32) / 255 for s, x in images.items()}, labels,
                   "binary", ["no", "yes"])
    runs = [_recipe("finetune").main(["--init", "vit-test", "--data", str(d), "--method", "linear", "--out",
                                      str(tmp_path / d.stem), "--max-steps", "20", "val_every=10", "lr=0.05", "progress=false"])
            for d in (u8, f32)]
    assert runs[0]["test/accuracy"] == runs[1]["test/accuracy"] == 1.0


def test_bad_input_leaves_no_out(tmp_path):
    (tmp_path / "img").mkdir()
    Image.fromarray(band_image(0)).save(tmp_path / "img" / "ok.png")
    csv = write_csv(tmp_path, [("img/ok.png", "a"), ("img/missing.png", "b")])
    out = tmp_path / "run"
    with pytest.raises(FileNotFoundError, match="missing.png"):
        _recipe("finetune").main(["--init", "vit-test", "--data", str(csv), "--out", str(out), *FAST])
    bad = save_npz(tmp_path / "neg.npz", {s: np.zeros((4, 8, 8), np.uint8) for s in ("train", "val", "test")},
                   {s: np.array([0, 1, -1, 0]) for s in ("train", "val", "test")}, "multiclass", ["a", "b"])
    with pytest.raises(DataFormatError, match=r"train_labels\[2\] = \[-1\]"):
        _recipe("finetune").main(["--init", "vit-test", "--data", str(bad), "--out", str(out), *FAST])
    assert not out.exists()


def test_img_size_reaches_the_saved_backbone(tmp_path):
    init = mmfm.build_model("vit-test").save_pretrained(tmp_path / "backbone")  # 32 px, patch 8
    data = write_image_folder(tmp_path / "pets", classes=("a", "b"), per_class=8)
    out = tmp_path / "run"
    _recipe("finetune").main(["--init", str(init), "--data", str(data), "--method", "full", "--out", str(out),
                              "img_size=16", *FAST])
    model = mmfm.build_model(out / "model")
    assert model.config.img_size == 16 and model.pos_embed.shape[1] == 1 + 2 * 2


def test_vit_classify_on_image_folder(tmp_path):
    data = write_image_folder(tmp_path / "pets")
    out = tmp_path / "vit"
    metrics = _recipe("vit_classify").main(["--data", str(data), "--out", str(out), "--max-steps", "2",
                                            "batch_size=8", "--preset", "vit-test"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["split/test"] == 5 and 0 <= saved["accuracy/all"] <= 1 and metrics["steps"] == 2
    assert mmfm.build_model(out / "model").config.num_classes == 3


def test_finetune_ddp_two_cpu_processes(tmp_path):
    data = write_image_folder(tmp_path / "pets", classes=("a", "b"), per_class=10)
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "recipes" / "finetune.py"), "--init", "vit-test", "--data", str(data),
           "--method", "full", "--out", str(out), "--device", "cpu", "--devices", "2", "--strategy", "ddp", *FAST]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("wrote ") == 1  # rank 0 alone writes metrics.json
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and mmfm.build_model(out / "model").config.num_classes == 2


def test_label_efficiency_on_user_folders(tmp_path):
    train = write_image_folder(tmp_path / "train", classes=("a", "b"), per_class=10)
    test = write_image_folder(tmp_path / "test", classes=("a", "b"), per_class=3, first=50)
    out = tmp_path / "grid"
    rows = _recipe("label_efficiency").main(
        ["--preset", "vit-test", "--data", str(train), "--test-data", str(test), "--backbones", "", "--methods", "linear",
         "--fractions", "1.0", "--sanity-data", "", "--max-steps", "2", "--out", str(out), "--plot", str(tmp_path / "p.png"),
         "val_every=1"])
    assert [(r["backbone"], r["method"], r["data"]) for r in rows] == [("scratch", "linear", "train")]
    cell = json.loads((out / "train" / "scratch_linear_f1" / "metrics.json").read_text())
    assert cell["split/test"] == 6 and cell["split/train"] + cell["split/val"] == 20


def test_vit_classify_refuses_val_data_without_data(tmp_path):
    from mmfm.config import ConfigError

    with pytest.raises(ConfigError, match="--val-data / --test-data go with --data"):
        _recipe("vit_classify").main(["--val-data", str(tmp_path), "--out", str(tmp_path / "run"), "--max-steps", "2"])
    assert not (tmp_path / "run").exists()
