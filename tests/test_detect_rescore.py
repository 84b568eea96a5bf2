"""The detector's second stage (mmfm.detect.rescore): box crops, class-agnostic merging, scores, save/load."""
import pytest
import torch
import torch.nn as nn

from mmfm.detect import (DetectorConfig, RescoreConfig, build_detector, default_vit, load_classifier, rescore,
                         save_classifier, save_detector, source_classifier)
from mmfm.detect.rescore import box_crops


class Fixed(nn.Module):
    """A 'classifier' whose logits are fixed, or the crop's mean brightness in column 0 (to see what it was given)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits
        self.seen = []

    def forward(self, x):
        self.seen.append(x)
        return self.logits.expand(len(x), -1)


def test_box_crops_centre_the_box_and_fill_outside_with_black():
    img = torch.zeros(1, 1, 64, 64)
    img[..., 20:30, 10:30] = 1.0  # a 20 x 10 white box at x 10..30, y 20..30
    box = torch.tensor([[10.0, 20.0, 30.0, 30.0]])
    crop = box_crops(img, [box], side=20, context=1.0)  # the 20 x 20 square around the box centre
    assert crop.shape == (1, 1, 20, 20) and crop.min() >= -1 and crop.max() <= 1
    assert torch.allclose(crop[0, 0, 6:14, 2:18], torch.ones(8, 16), atol=1e-5)  # inside the box: white
    assert torch.allclose(crop[0, 0, :4], -torch.ones(4, 20), atol=1e-5)  # above it: black
    corner = box_crops(img, [torch.tensor([[0.0, 0.0, 8.0, 8.0]])], side=16, context=2.0)
    assert torch.allclose(corner[0, 0, :4, :4], -torch.ones(4, 4))  # outside the image: black


def test_rescore_merges_classes_and_takes_the_classifier_labels():
    boxes = torch.tensor([[10.0, 10.0, 30.0, 30.0], [11.0, 10.0, 30.0, 31.0], [50.0, 50.0, 70.0, 70.0]])
    pred = {"boxes": boxes, "scores": torch.tensor([0.9, 0.6, 0.4]), "labels": torch.tensor([1, 2, 5])}
    p = torch.tensor([0.1, 0.2, 0.7])
    clf = Fixed(p.log()[None])
    out = rescore([pred], torch.zeros(1, 1, 96, 96), clf, RescoreConfig(top_k=2, power=1.0, nms_iou=0.5), side=16)[0]
    # the first two boxes overlap (IoU > 0.5) and merge into the 0.9 one; the third stays
    assert len(out["boxes"]) == 4 and torch.equal(out["boxes"][0], boxes[0]) and torch.equal(out["boxes"][2], boxes[2])
    assert out["labels"].tolist() == [2, 1, 2, 1]  # the classifier's top-2, not the detector's labels
    assert torch.allclose(out["scores"], torch.tensor([0.9 * 0.7, 0.9 * 0.2, 0.4 * 0.7, 0.4 * 0.2]))
    assert clf.seen[0].shape == (2, 1, 16, 16) and len(clf.seen) == 2  # per context: a crop per merged box
    flat = rescore([pred], torch.zeros(1, 1, 96, 96), clf, RescoreConfig(top_k=1, power=0.0, contexts=1.5), side=16)[0]
    assert torch.allclose(flat["scores"], torch.tensor([0.7, 0.7]))  # power 0: the classifier alone
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
    assert [len(o["boxes"]) for o in rescore([empty, pred], torch.zeros(2, 1, 96, 96), clf, side=16)] == [0, 6]
    # top_k 5 of 3 classes -> 3 per box; defaults merge at IoU 0.4
    assert [len(o["boxes"]) for o in rescore([empty], torch.zeros(1, 1, 96, 96), clf, side=16)] == [0]


def test_classifier_saved_beside_the_detector_loads_equal(tmp_path):
    cfg = DetectorConfig(img_size=64, channels=32, head_convs=1)
    vit = default_vit(cfg, dim=32, depth=1, n_heads=2)
    save_detector(build_detector(cfg, vit), cfg, tmp_path)
    assert load_classifier(tmp_path) is None  # no second stage saved yet
    clf = source_classifier("vit", 20, vit=default_vit(cfg, dim=32, depth=1, n_heads=2), side=32).eval()
    save_classifier(clf, {"backbone": "vit", "num_classes": 20, "side": 32,
                          "rescore": {"contexts": [1.3, 1.6], "top_k": 2}}, tmp_path)
    loaded, rcfg, side = load_classifier(tmp_path)
    x = torch.randn(3, 1, 32, 32)
    assert side == 32 and rcfg == RescoreConfig(contexts=(1.3, 1.6), top_k=2)
    assert torch.allclose(loaded(x), clf(x), atol=1e-6)


def test_bad_rescore_override_refused_by_name():
    from mmfm.config import ConfigError
    from mmfm.train import split_overrides

    assert split_overrides({"top_k": 2}, rescore=RescoreConfig()) == {"rescore": {"top_k": 2}}
    assert split_overrides({"contexts": [1.3, 1.6]}, rescore=RescoreConfig())["rescore"]["contexts"] == (1.3, 1.6)
    for bad in ({"top_k": 0}, {"nms_iou": 1.5}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            split_overrides(bad, rescore=RescoreConfig())
    with pytest.raises(ValueError, match="contexts"):
        RescoreConfig(contexts=(1.3, 0.9))


def test_second_stage_benchmark_scores_every_setting(tmp_path):
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).parents[1]
    mods = {}
    files = (("detect_recipe_b", "recipes/detect.py"), ("detect_second_stage", "benchmarks/detect_second_stage.py"))
    for name, path in files:
        spec = importlib.util.spec_from_file_location(name, root / path)
        mods[name] = importlib.util.module_from_spec(spec)
        sys.modules[name] = mods[name]
        spec.loader.exec_module(mods[name])
    out = tmp_path / "run"
    mods["detect_recipe_b"].main(["--out", str(out), "--max-steps", "1", "backbones=vit", "n_val=2", "n_test=2",
                                  "batch_size=2", "dim=32", "depth=1", "n_heads=2", "channels=32", "head_convs=1",
                                  "pretrain_steps=2", "pretrain_batch=4", "progress=false"])
    rows = mods["detect_second_stage"].main([str(out / "vit"), "--canvases", "4"])
    assert len(rows) == 2 + len(mods["detect_second_stage"].SETTINGS)
    assert all(0 <= r["map_50"] <= 1 for r in rows) and rows[0]["setting"] == "FCOS alone"
