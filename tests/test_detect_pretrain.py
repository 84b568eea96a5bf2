"""Detection backbone pretraining: crops come from the TRAIN split's sources only (no val/test digit or animal),
the recipe's pretraining stage trains on those crops, and the pretrained weights land in the detector's backbone."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfm.detect import (CanvasConfig, DetectorConfig, SourceCrops, build_detector, default_vit, init_from_classifier,
                         source_classifier, split_sources)


def _recipe():
    spec = importlib.util.spec_from_file_location("detect_recipe_pre", Path(__file__).parents[1] / "recipes/detect.py")
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = recipe  # dataclasses look their module up while the file executes
    spec.loader.exec_module(recipe)
    return recipe


def test_pretraining_crops_show_only_train_sources():
    src = split_sources(CanvasConfig(), seed=0)  # the real MNIST-5k digits and animal silhouettes
    crops = SourceCrops(src["train"], n=400, side=32, scales=(20, 32))
    held_out = set(src["val"].ids) | set(src["test"].ids)
    assert crops.ids == set(src["train"].ids) and not (crops.ids & held_out)
    drawn = {crops.draw(i)[2] for i in range(400)}
    assert len(drawn) > 300 and drawn <= crops.ids and not (drawn & held_out)


def test_crops_are_seeded_in_range_and_labelled():
    src = split_sources(CanvasConfig(), seed=0)["train"]
    crops = SourceCrops(src, n=8, side=32, scales=(20, 24), seed=3)
    x, y = crops[5]
    assert x.shape == (1, 32, 32) and -1.0 <= x.min() < x.max() <= 1.0 and torch.equal(x, crops[5][0])
    crop, label, sid = crops.draw(5)
    assert label == y and label == int(src.labels[list(src.ids).index(sid)])
    images, labels = crops.tensors()
    assert images.shape == (8, 1, 32, 32) and labels.shape == (8,)
    with pytest.raises(ValueError, match="scales"):
        SourceCrops(src, n=8, side=32, scales=(20, 40))


@pytest.mark.parametrize("backbone", ["vit", "timm:resnet18"])
def test_pretrained_weights_land_in_the_detector_backbone(backbone):
    cfg = DetectorConfig(backbone=backbone, img_size=64, channels=32, head_convs=1)
    vit = default_vit(cfg, dim=32, depth=1, n_heads=2) if backbone == "vit" else None
    detector = build_detector(cfg, vit)
    clf = source_classifier(backbone, cfg.num_classes, vit=default_vit(cfg, dim=32, depth=1, n_heads=2)
                            if backbone == "vit" else None, side=32)
    with torch.no_grad():  # stands in for the classification stage: weights unlike the detector's own
        for p in clf.parameters():
            p.add_(torch.randn_like(p))
    assert clf(torch.randn(2, 1, 32, 32)).shape == (2, cfg.num_classes)
    n = init_from_classifier(detector, clf)
    trunk = detector.backbone.vit if backbone == "vit" else detector.backbone.body
    source = (clf if backbone == "vit" else clf.body).state_dict()
    assert n == len(trunk.state_dict()) > 10
    for k, v in trunk.state_dict().items():
        assert torch.equal(v, source[k]), k


def test_recipe_pretrains_on_train_sources_then_detects(tmp_path, monkeypatch):
    recipe = _recipe()
    seen = []

    class Spy(recipe.SourceCrops):
        def __init__(self, sources, n, *a, **kw):
            seen.append((set(sources.ids), n))
            super().__init__(sources, n, *a, **kw)

    monkeypatch.setattr(recipe, "SourceCrops", Spy)
    out = tmp_path / "run"
    m = recipe.main(["--out", str(out), "--max-steps", "1", "backbones=vit", "n_val=2", "n_test=2", "batch_size=2",
                     "dim=32", "depth=1", "n_heads=2", "channels=32", "head_convs=1", "size=64", "max_scale=28",
                     "pretrain_steps=2", "pretrain_batch=4", "progress=false"])
    src = split_sources(CanvasConfig(size=64, max_scale=28), seed=0)
    train_ids, (ids, n) = set(src["train"].ids), seen[0]
    assert n == 2 * 4 and ids == train_ids  # the training crops: train-split sources only
    assert not (ids & (set(src["val"].ids) | set(src["test"].ids)))
    assert seen[1][0] == set(src["val"].ids)  # then the accuracy check on val crops (evaluation only)
    assert 0.0 <= m["pretrain_val_acc/vit"] <= 1.0 and m["pretrain_steps/vit"] == 2
    assert (out / "vit" / "pretrain" / "checkpoints" / "last.ckpt").is_file()
    with pytest.raises(Exception, match="pretrain_steps"):
        recipe.main(["--out", str(out / "bad"), "pretrain_steps=-1"])
    assert np.isfinite(m["test/vit/map"])
