"""Medical readers on tiny files made here: MedMNIST .npz, DICOM (one file and a series), NIfTI."""
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from mmfm.data.medical import (images_to_tensor, load_npz, nifti_slices, read_dicom, read_dicom_series, read_nifti,
                               save_npz, window)


def _arrays(n=(6, 3, 4), shape=(8, 8), n_labels=1, high=2):
    r = np.random.default_rng(0)
    images = {s: r.integers(0, 256, (k, *shape), dtype=np.uint8) for s, k in zip(("train", "val", "test"), n)}
    labels = {s: r.integers(0, high, (k, n_labels)) for s, k in zip(("train", "val", "test"), n)}
    return images, labels


def test_npz_with_stored_metadata(tmp_path):
    images, labels = _arrays(high=3)
    save_npz(tmp_path / "mine.npz", images, labels, "ordinal", ["low", "mid", "high"])
    task = load_npz(tmp_path / "mine.npz")
    assert task.kind == "ordinal" and task.label_names == ["low", "mid", "high"] and task.n_channels == 1
    assert np.array_equal(task.images["val"], images["val"])
    assert task.targets("test").dtype == torch.int64 and task.targets("test").shape == (4,)


def test_npz_metadata_from_medmnist_info_by_file_name(tmp_path):
    images, labels = _arrays(shape=(28, 28, 3))
    save_npz(tmp_path / "breastmnist_64.npz", images, labels)  # no stored task: medmnist.INFO['breastmnist']
    task = load_npz(tmp_path / "breastmnist_64.npz")
    assert task.kind == "binary" and task.name == "breastmnist" and len(task.label_names) == 2
    assert task.n_channels == 3 and images_to_tensor(task.images["train"]).shape == (6, 3, 28, 28)
    images, labels = _arrays(n_labels=14)
    save_npz(tmp_path / "chestmnist.npz", images, labels)
    task = load_npz(tmp_path / "chestmnist.npz")
    assert task.kind == "multilabel" and task.n_classes == 14
    assert task.targets("train").shape == (6, 14) and task.targets("train").dtype == torch.float32


def test_npz_unknown_name_falls_back_to_multiclass_and_missing_keys_fail(tmp_path):
    images, labels = _arrays(high=4)
    save_npz(tmp_path / "other.npz", images, labels)
    task = load_npz(tmp_path / "other.npz")
    assert task.kind == "multiclass" and task.n_classes == labels["train"].max() + 1
    np.savez(tmp_path / "bad.npz", train_images=images["train"])
    with pytest.raises(ValueError, match="lacks"):
        load_npz(tmp_path / "bad.npz")


def _dicom(path, pixels, slope=2.0, intercept=-1024.0, z=0.0, series="1.2.3"):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = "CT", series
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, z]
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_rescale_and_window(tmp_path):
    pixels = np.arange(16, dtype=np.uint16).reshape(4, 4) * 100
    hu = read_dicom(_dicom(tmp_path / "a.dcm", pixels))
    assert hu.dtype == np.float32 and np.allclose(hu, pixels * 2.0 - 1024.0)
    w = window(hu, center=40, width=80)  # brain window: [0, 80] HU -> [0, 1]
    assert w.min() == 0 and w.max() == 1 and np.allclose(window(np.array([40.0]), 40, 80), 0.5)
    with pytest.raises(ValueError):
        window(hu, 0, 0)


def test_dicom_series_sorted_by_position(tmp_path):
    for i, z in enumerate([5.0, -2.5, 1.0]):  # written out of order
        _dicom(tmp_path / f"s{i}.dcm", np.full((3, 3), i, dtype=np.uint16), slope=1.0, intercept=0.0, z=z)
    (tmp_path / "notes.txt").write_text("not dicom")
    volume, positions = read_dicom_series(tmp_path)
    assert volume.shape == (3, 3, 3) and positions == [-2.5, 1.0, 5.0]
    assert volume[:, 0, 0].tolist() == [1.0, 2.0, 0.0]
    _dicom(tmp_path / "other.dcm", np.zeros((3, 3)), series="9.9")
    with pytest.raises(ValueError, match="series"):
        read_dicom_series(tmp_path)


def test_real_pydicom_test_file():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = read_dicom(path)
    assert hu.shape == (ds.Rows, ds.Columns)
    assert np.allclose(hu, ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))


def test_nifti_volume_and_slices(tmp_path):
    vol = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])  # stored L->R flipped (LAS); canonical RAS undoes it
    nib.save(nib.Nifti1Image(vol, flip), tmp_path / "v.nii.gz")
    data, affine = read_nifti(tmp_path / "v.nii.gz")
    assert data.shape == (4, 5, 6) and np.array_equal(data, vol[::-1].astype(np.float32))
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    raw, _ = read_nifti(tmp_path / "v.nii.gz", canonical=False)
    assert np.array_equal(raw, vol)
    axial = nifti_slices(data, axis=2)
    assert axial.shape == (6, 4, 5) and np.array_equal(axial[3], data[:, :, 3])
    assert nifti_slices(data, axis=0, step=2).shape == (2, 5, 6)
