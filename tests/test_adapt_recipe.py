"""recipes/finetune.py end to end on tiny temp .npz files: a few steps, metrics.json, plots, a loadable model."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mmfm
from mmfm.adapt.data import pixel_stats, to_backbone_input
from mmfm.data.medical import save_npz

ROOT = Path(__file__).resolve().parents[1]


def _recipe():
    if "finetune_recipe" not in sys.modules:
        spec = importlib.util.spec_from_file_location("finetune_recipe", ROOT / "recipes" / "finetune.py")
        sys.modules["finetune_recipe"] = importlib.util.module_from_spec(spec)  # dataclasses need the module registered
        spec.loader.exec_module(sys.modules["finetune_recipe"])
    return sys.modules["finetune_recipe"]


def _tiny_npz(path, kind, n_classes, names, size=16):
    """Class c brightens band c of the image: learnable in a few steps."""
    r = np.random.default_rng(0)
    images, labels = {}, {}
    for split, n in (("train", 48), ("val", 16), ("test", 16)):
        y = r.integers(0, n_classes, n)
        x = (r.random((n, size, size)) * 60).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 4 * c:4 * c + 4] += 150
        images[split], labels[split] = x, y[:, None]
    return save_npz(path, images, labels, kind, names)


def test_lora_weighted_multiclass_from_saved_folder(tmp_path):
    data = _tiny_npz(tmp_path / "tiny.npz", "multiclass", 3, ["a", "b", "c"])
    backbone = mmfm.build_model("vit-test").save_pretrained(tmp_path / "backbone")
    out = tmp_path / "run"
    metrics = _recipe().main(["--init", str(backbone), "--data", str(data), "--method", "lora", "--out", str(out),
                              "--max-steps", "6", "val_every=3", "batch_size=16", "weighted_loss=true",
                              "lora_rank=2", "progress=false"])
    saved = json.loads((out / "metrics.json").read_text())
    for split in ("val", "test"):
        for key in ("accuracy", "balanced_accuracy", "auroc", "precision", "recall", "f1"):
            assert 0 <= saved[f"{split}/{key}"] <= 1
        assert (out / f"confusion_{split}.png").stat().st_size > 1000
    assert saved["method"] == "lora" and saved["steps"] == 6 and saved["n_train"] == 48
    assert 0 < saved["trainable_params"] < saved["params"]
    assert (out / "loss.png").is_file() and (out / "checkpoints" / "best.ckpt").is_file()
    model = mmfm.build_model(out / "model").eval()  # LoRA merged into a plain ViT with a 3-way head
    assert model.config.num_classes == 3 and not any("lora" in n for n, _ in model.named_parameters())
    assert _saved_accuracy(model, data, lambda logits: logits.argmax(1)) == pytest.approx(metrics["test/accuracy"])


def _saved_accuracy(model, data, decide, stats=((0.5,), (0.5,))) -> float:
    """Test accuracy of a saved model, recomputed from the .npz (what the recipe reported must match)."""
    test = np.load(data)
    x = to_backbone_input(test["test_images"], model.config.img_size, model.config.in_chans, *stats)
    with torch.no_grad():
        return (decide(model(x)) == torch.from_numpy(test["test_labels"][:, 0])).float().mean().item()


def test_linear_binary_clip_with_label_fraction(tmp_path):
    data = _tiny_npz(tmp_path / "bin.npz", "binary", 2, ["no", "yes"], size=24)
    out = tmp_path / "run"
    metrics = _recipe().main(["--init", "clip-test", "--data", str(data), "--method", "linear", "--out", str(out),
                              "--max-steps", "8", "val_every=2", "label_fraction=0.5", "progress=false"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["kind"] == "binary" and saved["n_train"] == 24 and saved["trainable_params"] == 32 + 1
    assert {"test/auroc", "test/f1", "val/balanced_accuracy"} <= set(saved)
    model = mmfm.build_model(out / "model").eval()  # backbone + the head fit on cached features
    assert model.config.num_classes == 1
    stats = pixel_stats(mmfm.get_config("clip-test"))  # CLIP's own normalisation (not stored in the ViT folder)
    acc = _saved_accuracy(model, data, lambda logits: (logits[:, 0] > 0).long(), stats)
    assert acc == pytest.approx(metrics["test/accuracy"])
