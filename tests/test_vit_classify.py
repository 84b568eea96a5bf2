"""The classification task and recipe on synthetic data."""
import json

import torch

import mmfm
from mmfm.train import classify
from test_dit_train import load_recipe, tiny_data  # noqa: F401  (fixture)


def test_load_labelled_offsets_and_split(tiny_data):  # noqa: F811
    tr, te = classify.load_labelled(split="train"), classify.load_labelled(split="test")
    assert tr.images.shape[1:] == (1, 28, 28) and tr.images.min() >= -1 and tr.images.max() <= 1
    assert len(tr.labels) + len(te.labels) == 160 and len(te.labels) == 32
    assert set(tr.of("animals").labels.tolist()) <= set(range(10, 20)) and tr.class_names[10] == "a0"


def test_random_shift_keeps_shape_and_background():
    x = -torch.ones(4, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1
    y = classify.random_shift(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y[:, :, 0, 0].allclose(torch.tensor(-1.0))
    assert not torch.allclose(y, x)


def test_vit_recipe_learns_synthetic_classes(tmp_path, tiny_data):  # noqa: F811
    vit_classify = load_recipe("vit_classify")

    m = vit_classify.main(["--out", str(tmp_path), "--max-steps", "40", "batch_size=32", "dim=32", "depth=1",
                           "n_heads=2", "augment=false", "lr=3e-3", "warmup_steps=5"])
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["accuracy/digits"] == m["accuracy/digits"]
    losses = [v for _, v in json.loads((tmp_path / "history.json").read_text())["train/loss"]]
    assert losses[-1] < losses[0] - 0.5, losses  # it learns (ln 20 = 3.0 at the start)
    model = mmfm.build_model(tmp_path / "model")
    assert classify.accuracy_per_dataset(model, classify.load_labelled(split="test"))["accuracy/all"] == m["accuracy/all"]
