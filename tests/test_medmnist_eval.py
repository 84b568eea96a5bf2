"""MedMNIST's evaluation (ACC, AUC per task type) against values computed by hand with sklearn, and against
medmnist's own getACC / getAUC."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from mmfm.eval.medmnist import medmnist_flag, medmnist_metrics

RNG = np.random.default_rng(0)


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_multiclass_and_ordinal_by_hand():
    y = np.array([0, 1, 2, 2, 1, 0, 2, 1])
    s = _softmax(RNG.normal(size=(8, 3)) + 2 * np.eye(3)[y] * (np.arange(8) % 3 > 0)[:, None])
    auc = np.mean([roc_auc_score(y == k, s[:, k]) for k in range(3)])
    for task in ("multi-class", "ordinal-regression", "multiclass", "ordinal"):
        m = medmnist_metrics(task, y[:, None], s)
        assert m["acc"] == pytest.approx(accuracy_score(y, s.argmax(1)))
        assert m["auc"] == pytest.approx(auc)
    # a hand-checked case: 3 of 4 right; class 0 ranks perfectly, class 1 at 3/4
    y = np.array([0, 0, 1, 1])
    s = np.array([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.2, 0.8]])
    assert medmnist_metrics("multi-class", y, s) == {"acc": 0.75, "auc": pytest.approx(0.75)}


def test_binary_uses_strict_threshold_and_last_column():
    y = np.array([0, 1, 1, 0, 1])
    p = np.array([0.2, 0.5, 0.9, 0.4, 0.7])  # 0.5 is NOT > 0.5: predicted negative, as in MedMNIST
    m = medmnist_metrics("binary-class", y, p)
    assert m["acc"] == pytest.approx(0.8) and m["auc"] == pytest.approx(roc_auc_score(y, p)) == 1.0
    two = np.stack([1 - p, p], 1)
    assert medmnist_metrics("binary", y[:, None], two) == m


def test_multilabel_means_over_labels():
    y = RNG.integers(0, 2, size=(20, 4))
    s = np.clip(y * 0.6 + RNG.uniform(size=(20, 4)) * 0.5, 0, 1)
    m = medmnist_metrics("multi-label, binary-class", y, s)
    assert m["acc"] == pytest.approx(np.mean([accuracy_score(y[:, i], s[:, i] > 0.5) for i in range(4)]))
    assert m["auc"] == pytest.approx(np.mean([roc_auc_score(y[:, i], s[:, i]) for i in range(4)]))


@pytest.mark.parametrize("task,shape", [("multi-class", (30, 5)), ("binary-class", (30,)),
                                        ("multi-label, binary-class", (30, 3)), ("ordinal-regression", (30, 4))])
def test_equals_medmnist_evaluator_functions(task, shape):
    from medmnist.evaluator import getACC, getAUC

    if task == "multi-label, binary-class":
        y = RNG.integers(0, 2, size=shape)
        y[0], y[1] = 0, 1
    else:
        y = np.arange(30) % (shape[1] if len(shape) > 1 else 2)
    s = RNG.uniform(size=shape)
    if task in ("multi-class", "ordinal-regression"):
        s = s / s.sum(1, keepdims=True)
    m = medmnist_metrics(task, y, s)
    assert m["acc"] == pytest.approx(getACC(y, s, task)) and m["auc"] == pytest.approx(getAUC(y, s, task))


def test_flags_and_bad_task():
    assert medmnist_flag("data/pathmnist.npz") == "pathmnist"
    assert medmnist_flag("chestmnist_64.npz") == "chestmnist"
    assert medmnist_flag("OrganAMNIST") == "organamnist"
    assert medmnist_flag("my_xrays.npz") is None and medmnist_flag("brain_mri_patches") is None
    with pytest.raises(ValueError, match="task"):
        medmnist_metrics("regression", [0, 1], [0.1, 0.9])
    nan = medmnist_metrics("binary-class", [1, 1], [0.2, 0.9])
    assert nan["acc"] == 0.5 and np.isnan(nan["auc"])


def _recipe():
    import importlib.util
    import sys
    from pathlib import Path

    if "finetune_recipe" not in sys.modules:
        spec = importlib.util.spec_from_file_location("finetune_recipe",
                                                      Path(__file__).parents[1] / "recipes" / "finetune.py")
        sys.modules["finetune_recipe"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules["finetune_recipe"])
    return sys.modules["finetune_recipe"]


@pytest.mark.parametrize("name,n_labels", [("breastmnist.npz", 2), ("my_scans.npz", 2)])
def test_finetune_reports_medmnist_metrics_for_official_names(tmp_path, name, n_labels):
    """A MedMNIST-layout file named breastmnist.npz (binary-class in medmnist.INFO) gets test/medmnist/acc and
    /auc equal to the Evaluator's on the saved model's scores; another name gets none."""
    import json

    import torch

    import mmfm

    r = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 32), ("val", 12), ("test", 12)):
        y = np.arange(n) % n_labels
        x = (r.random((n, 16, 16)) * 60).astype(np.uint8)
        x[y == 1, :8] += 150
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y[:, None]
    np.savez(tmp_path / name, **arrays)
    out = tmp_path / "run"
    _recipe().main(["--init", "vit-test", "--data", str(tmp_path / name), "--method", "full", "--out", str(out),
                    "--max-steps", "3", "val_every=3", "batch_size=16", "progress=false", "img_size=16"])
    saved = json.loads((out / "metrics.json").read_text())
    if name.startswith("my_"):
        assert not any("medmnist" in k for k in saved)
        return
    model = mmfm.build_model(out / "model").eval()
    from mmfm.adapt.data import to_backbone_input
    with torch.no_grad():
        p = model(to_backbone_input(arrays["test_images"], 16, 3, (0.5,), (0.5,)))[:, 0].sigmoid().numpy()
    from medmnist.evaluator import getACC, getAUC
    assert saved["test/medmnist/acc"] == pytest.approx(getACC(arrays["test_labels"], p, "binary-class"))
    assert saved["test/medmnist/auc"] == pytest.approx(getAUC(arrays["test_labels"], p, "binary-class"))
