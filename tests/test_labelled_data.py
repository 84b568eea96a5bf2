"""mmfm.data.labelled: every accepted layout read from tiny files written here, pixels read at the right scale,
labels checked when loaded, bad input named clearly."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from mmfm.adapt.data import load_task, to_backbone_input
from mmfm.data.formats import DataFormatError
from mmfm.data.labelled import PixelScale, detect
from mmfm.data.medical import save_npz
from mmfm.eval.linear_probe import fit_logistic, linear_probe


def band_image(c: int, size: int = 16, seed: int = 0) -> np.ndarray:
    """uint8 (size, size): noise with a bright band at rows 4c..4c+3 (class c)."""
    x = (np.random.default_rng(seed).random((size, size)) * 60).astype(np.uint8)
    x[4 * c:4 * c + 4] += 150
    return x


def write_image_folder(root, classes=("cat", "dog", "owl"), per_class=8, size=16, rgb_every=0, first=0):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(first, first + per_class):
            img = Image.fromarray(band_image(c, size, seed=100 * c + i))
            if rgb_every and i % rgb_every == 0:
                img = img.convert("RGB").resize((size + 4, size))  # another mode and size
            img.save(root / name / f"{i:03d}.png")
    return root


def write_csv(root, rows, name="labels.csv"):
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
    return root / name


def test_image_folder_detected_split_and_logged(tmp_path, caplog):
    root = write_image_folder(tmp_path / "pets")
    with caplog.at_level(logging.INFO):
        task = load_task(root, seed=3)
    assert detect(root) == "ImageFolder" and task.format == "ImageFolder"
    assert task.label_names == ["cat", "dog", "owl"] and task.kind == "multiclass"
    assert task.sizes == {"train": 17, "val": 2, "test": 5, "duplicates_dropped": 0, "bad_files": 0}
    assert task.images["train"].dtype == np.uint8 and task.images["train"].shape[1:] == (16, 16)
    line = next(r.message for r in caplog.records if r.message.startswith("labelled images:"))
    assert "ImageFolder" in line and "24 examples, 3 classes" in line and "uint8 / 255" in line
    again = load_task(root, seed=3)  # deterministic by seed
    assert all(np.array_equal(task.images[s], again.images[s]) for s in ("train", "val", "test"))
    assert not np.array_equal(task.labels["test"], load_task(root, seed=4).labels["test"])


def test_duplicates_across_splits_dropped(tmp_path):
    root = tmp_path / "dups"
    for c, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for i in range(10):  # 5 distinct images per class, each written twice
            Image.fromarray(band_image(c, seed=i % 5)).save(root / name / f"{i}.png")
    task = load_task(root, val_fraction=0.2, test_fraction=0.2)
    assert task.sizes["duplicates_dropped"] > 0
    fps = {s: {x.tobytes() for x in task.images[s]} for s in ("train", "val", "test")}
    assert not fps["train"] & fps["test"] and not fps["train"] & fps["val"] and not fps["val"] & fps["test"]


def test_csv_multilabel_relative_paths(tmp_path):
    root = tmp_path / "csv"
    (root / "img").mkdir(parents=True)
    rows = []
    for i in range(20):
        Image.fromarray(band_image(i % 3, seed=i)).save(root / "img" / f"{i}.png")
        rows.append((f"img/{i}.png", ["effusion", "nodule", "effusion|nodule"][i % 3]))
    task = load_task(write_csv(root, rows, "pairs.csv"))
    assert task.format == "CSV" and task.kind == "multilabel" and task.label_names == ["effusion", "nodule"]
    assert task.targets("train").shape[1] == 2 and set(task.targets("train").sum(1).tolist()) <= {1.0, 2.0}


def test_mixed_sizes_and_modes_converted_once(tmp_path, caplog):
    root = write_image_folder(tmp_path / "mixed", rgb_every=3)
    with caplog.at_level(logging.INFO):
        task = load_task(root, size=24)
    assert task.images["train"].shape[1:] == (24, 24, 3)
    assert "resize to 24x24" in task.chain and "RGB" in task.chain
    assert sum("labelled images:" in r.message for r in caplog.records) == 1


def test_unreadable_files_skipped_counted_then_stop(tmp_path, caplog):
    root = write_image_folder(tmp_path / "bad", per_class=10)
    data = (root / "cat" / "000.png").read_bytes()
    (root / "cat" / "000.png").write_bytes(data[: len(data) // 2])  # truncated
    (root / "dog" / "001.png").write_bytes(b"not an image at all")
    with caplog.at_level(logging.WARNING):
        task = load_task(root, max_bad_fraction=0.1)
    assert task.sizes["bad_files"] == 2 and sum(len(y) for y in task.labels.values()) == 28
    assert "skipped 2 unreadable" in caplog.text and "000.png" in caplog.text
    with pytest.raises(DataFormatError, match=r"2 of 30 image files could not be read.*max_bad_fraction=0.05"):
        load_task(root, max_bad_fraction=0.05)


def test_empty_folder_and_class_and_unknown_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match="empty"):
        load_task(tmp_path / "empty")
    root = write_image_folder(tmp_path / "some")
    (root / "zebra").mkdir()
    with pytest.raises(DataFormatError, match=r"\['zebra'\] hold no image files"):
        load_task(root)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"x")
    with pytest.raises(DataFormatError) as e:
        load_task(tmp_path / "flat")
    for name in ("ImageFolder", "CSV", "MedMNIST .npz", "DICOM folder", "NIfTI folder", "path,label"):
        assert name in str(e.value)
    (tmp_path / "x.parquet").write_bytes(b"x")
    with pytest.raises(DataFormatError, match="Accepted formats"):
        load_task(tmp_path / "x.parquet")


def test_csv_missing_paths_listed(tmp_path):
    root = tmp_path / "csv"
    (root / "img").mkdir(parents=True)
    Image.fromarray(band_image(0)).save(root / "img" / "ok.png")
    csv = write_csv(root, [("img/ok.png", "a"), ("img/gone1.png", "b"), ("img/gone2.png", "a")])
    with pytest.raises(FileNotFoundError, match=r"2 image path\(s\) do not exist.*gone1.png.*gone2.png"):
        load_task(csv)
    (root / "bad.csv").write_text("file_name,class\nimg/ok.png,a\n")
    with pytest.raises(DataFormatError, match=r"bad.csv:1: expected a header with columns path,label"):
        load_task(root / "bad.csv")


def test_val_test_from_other_folders_and_unseen_label(tmp_path):
    train = write_image_folder(tmp_path / "train", per_class=6)
    val = write_image_folder(tmp_path / "val", per_class=2)  # copies of 2 training images per class
    test = write_image_folder(tmp_path / "test", per_class=2, first=50)
    task = load_task(train, val_data=val, test_data=test)
    assert task.sizes == {"train": 12, "val": 6, "test": 6, "duplicates_dropped": 6, "bad_files": 0}
    odd = write_image_folder(tmp_path / "odd", classes=("cat", "yak"), per_class=2)
    with pytest.raises(DataFormatError, match=r"test example \d+ has label 'yak', which never occurs in the training"):
        load_task(train, test_data=odd)


# ---- pixels read at the right scale -----------------------------------------------------------------

def _npz(path, images, labels=None, kind="multiclass", names=("a", "b")):
    """The same labels in each split; val and test images are the training images flipped (no copies)."""
    n = len(images)
    labels = np.arange(n) % 2 if labels is None else labels
    split_images = {"train": images, "val": images[:, ::-1], "test": images[:, :, ::-1]}
    return save_npz(path, split_images, {s: labels for s in ("train", "val", "test")}, kind, list(names))


def test_pixels_by_dtype(tmp_path):
    u8 = np.stack([band_image(c % 2, seed=c) for c in range(6)])
    as_u8 = load_task(_npz(tmp_path / "u8.npz", u8))
    as_float = load_task(_npz(tmp_path / "f.npz", u8.astype(np.float32) / 255))
    a = to_backbone_input(as_u8.images["test"], 16, 1, (0.5,), (0.5,))
    b = to_backbone_input(as_float.images["test"], 16, 1, (0.5,), (0.5,))
    assert torch.allclose(a, b, atol=1e-6) and a.min() < -0.5 and a.max() > 0.5  # not squeezed to [-1, -0.99]
    ct = (u8.astype(np.uint16) * 16)  # 12-bit CT-like values 0..4080
    hu = u8.astype(np.int16) * 8 - 1024  # signed Hounsfield units
    for name, arr in (("ct", ct), ("hu", hu)):
        task = load_task(_npz(tmp_path / f"{name}.npz", arr))
        x = task.images["train"]
        assert x.dtype == np.float32 and x.min() == 0 and x.max() == 1, name
        assert "intensity range" in task.chain
        corr = np.corrcoef(x.reshape(-1), arr.reshape(-1).astype(np.float64))[0, 1]
        assert corr > 0.99, name  # a monotone (linear, clipped) map of the stored values


def test_nan_pixels_refused(tmp_path):
    x = np.random.default_rng(0).random((6, 8, 8)).astype(np.float32) * 100
    x[3, 2, 2] = np.nan
    with pytest.raises(DataFormatError, match="NaN or infinite"):
        load_task(_npz(tmp_path / "nan.npz", x))


def test_pixel_scale_refuses_other_kinds_in_eval_splits():
    scale = PixelScale.fit([np.zeros((2, 4, 4), np.float32) + 0.5], [False], "d")
    assert scale.mode == "unit"
    with pytest.raises(DataFormatError, match=r"d \(test\): float32 pixel values in \[0, 300\]"):
        scale.apply(np.array([[0.0, 300.0]], np.float32), source="d (test)")
    with pytest.raises(ValueError, match=r"float32 values in \[-3, 2\]"):
        to_backbone_input(np.array([[[-3.0, 2.0]]], np.float32), 2, 1, (0.5,), (0.5,))


# ---- labels that make no sense -------------------------------------------------------------------------

@pytest.mark.parametrize("labels, kind, message", [
    (np.arange(12) % 2, "multiclass", r"train_labels has shape \(12,\) for 6 images"),
    (np.array([[0, 1]] * 6), "multiclass", "2 columns per image but the task is multiclass"),
    (np.array([3, 7, 3, 7, 3, 7]), "binary", r"train_labels\[0\] = \[3\] is outside the binary task's labels 0..1"),
    (np.array([0, 1, -1, 0, 1, 0]), "multiclass", r"train_labels\[2\] = \[-1\] is outside"),
    (np.array([0, 1, 2, 0, 1, 0]), "multiclass", r"train_labels\[2\] = \[2\] is outside .* labels 0..1 \(a, b\)"),
    (np.array([0, 1, 0.5, 0, 1, 0]), "multiclass", r"train_labels\[2\] = \[0.5\]: labels must be integers"),
])
def test_bad_labels_named(tmp_path, labels, kind, message):
    images = np.zeros((6, 8, 8), np.uint8)
    with pytest.raises(ValueError, match=message):
        load_task(_npz(tmp_path / "bad.npz", images, labels, kind))


def test_test_label_unseen_in_training(tmp_path):
    images = np.arange(6 * 64, dtype=np.uint8).reshape(6, 8, 8)
    path = save_npz(tmp_path / "unseen.npz", {s: images for s in ("train", "val", "test")},
                    {"train": np.array([0, 1, 0, 1, 0, 1]), "val": np.array([0, 1, 0, 1, 0, 1]),
                     "test": np.array([0, 1, 2, 1, 0, 1])}, "multiclass", ["a", "b", "c"])
    with pytest.raises(DataFormatError, match=r"test label 2 \('c', first at test example 2\) never occurs"):
        load_task(path)


# ---- evaluation follows the device and dtype of its inputs --------------------------------------------

def test_fit_logistic_follows_feature_dtype():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long()
    w, b = fit_logistic(x, y, 2, max_iter=20)
    assert w.dtype == b.dtype == torch.float64 and w.device == x.device
    assert linear_probe(x[:30], y[:30], x[30:], y[30:]) > 0.8
