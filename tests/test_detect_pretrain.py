"""Detection backbone pretraining: crops come from the TRAIN split's sources only (no val/test digit or animal),
the recipe's pretraining stage trains on those crops, and the pretrained weights land in the detector's backbone."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mmfm.config import ConfigError
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

    scales = []

    class TaskSpy(recipe.DetectTask):
        def configure_optimizers(self):
            conf = super().configure_optimizers()
            scales.append(sorted({round(g["initial_lr"] / self.lr, 6) for g in conf["optimizer"].param_groups}))
            return conf

    monkeypatch.setattr(recipe, "SourceCrops", Spy)
    monkeypatch.setattr(recipe, "DetectTask", TaskSpy)
    out = tmp_path / "run"
    m = recipe.main(["--out", str(out), "--max-steps", "1", "backbones=vit", "n_val=2", "n_test=2", "batch_size=2",
                     "dim=32", "depth=1", "n_heads=2", "channels=32", "head_convs=1", "size=64", "max_scale=28",
                     "pretrain_steps=vit:2,resnet18:7", "pretrain_batch=4", "backbone_lr_scale=vit:0.5,resnet18:2",
                     "progress=false"])
    assert scales == [[0.5, 1.0]] and m["backbone_lr_scale/vit"] == 0.5  # the trunk's groups at 0.5 x lr
    src = split_sources(CanvasConfig(size=64, max_scale=28), seed=0)
    train_ids, (ids, n) = set(src["train"].ids), seen[0]
    assert n == 2 * 4 and ids == train_ids  # the training crops: train-split sources only
    assert not (ids & (set(src["val"].ids) | set(src["test"].ids)))
    assert seen[1][0] == set(src["val"].ids)  # then the accuracy check on val crops (evaluation only)
    assert 0.0 <= m["pretrain_val_acc/vit"] <= 1.0 and m["pretrain_steps/vit"] == 2
    assert (out / "vit" / "pretrain" / "checkpoints" / "last.ckpt").is_file()
    # the pretraining classifier became the second stage: saved beside the detector, FCOS alone kept as fcos/
    assert m["two_stage/vit"] is True and 0 <= m["test/vit/fcos/map_50"] <= 1 and "val/vit/fcos/map" in m
    from mmfm.detect import load_classifier
    clf, rcfg, side = load_classifier(out / "vit")
    assert side == 32 and clf(torch.zeros(2, 1, 32, 32)).shape == (2, 20)
    for bad in ("pretrain_steps=-1", "pretrain_steps=vit:3", "backbone_lr_scale=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            recipe.main(["--out", str(out / "bad"), bad])
    assert np.isfinite(m["test/vit/map"])


def test_backbone_lr_scale_gives_the_trunk_its_own_lr():
    """DetectTask(backbone_lr_scale=0.1): the trunk's parameters (backbone.body) train at 0.1 x lr through the one
    optimizer builder, the FPN and head at lr; the warmup-cosine schedule scales both by the same factor."""
    from mmfm.detect import DetectTask, trunk_name

    cfg = DetectorConfig(backbone="timm:resnet18", img_size=64, channels=32, head_convs=1)
    model = build_detector(cfg)
    assert trunk_name(model) == "backbone.body"
    conf = DetectTask(model, 1e-3, 0.05, 2, 10, backbone_lr_scale=0.1).configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    trunk = {id(p) for p in model.backbone.body.parameters()}
    assert len(lr_of) == len(list(model.parameters()))  # every parameter in exactly one group
    assert {round(lr_of[i], 9) for i in trunk} == {0.5e-4}  # step 0 of a 2-step warmup: factor 0.5
    assert {round(lr_of[i], 9) for i in lr_of if i not in trunk} == {0.5e-3}
    opt.step(), sched.step()
    assert {round(g["lr"] / g["initial_lr"], 6) for g in opt.param_groups} == {1.0}
    plain = DetectTask(model, 1e-3, 0.05, 2, 10).configure_optimizers()["optimizer"]
    assert len(plain.param_groups) == 2 and {round(g["lr"], 9) for g in plain.param_groups} == {0.5e-3}
    vit_model = build_detector(DetectorConfig(img_size=64, channels=32, head_convs=1),
                               default_vit(DetectorConfig(img_size=64), dim=32, depth=1, n_heads=2))
    assert trunk_name(vit_model) == "backbone.vit"


def test_lr_scale_errors_are_named():
    from mmfm.train.optim import build_optimizer, param_groups

    m = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    groups = param_groups(m, 0.1, {"1": 0.5})
    assert [len(g["params"]) for g in groups] == [1, 1, 0, 2] and groups[3]["lr_scale"] == 0.5
    assert [g["lr"] for g in build_optimizer(m, 1e-2, lr_scale={"0": 3.0}).param_groups] == [1e-2, 1e-2, 3e-2, 3e-2]
    with pytest.raises(ValueError, match="no submodule 'body'"):
        param_groups(m, 0.1, {"body": 0.1})
    with pytest.raises(ValueError, match=r"lr_scale\['0'\]"):
        param_groups(m, 0.1, {"0": 0.0})
    with pytest.raises(ValueError, match="lr_scale is for optimizer='adamw'"):
        build_optimizer(m, 1e-3, optimizer="muon", lr_scale={"0": 0.1})


def test_per_backbone_values_parsed_and_refused_by_name():
    per = _recipe().per_backbone
    names = ["vit", "resnet18"]
    assert per("pretrain_steps", 300, names) == {"vit": 300, "resnet18": 300}
    assert per("pretrain_steps", "vit:900,resnet18:150", names) == {"vit": 900, "resnet18": 150}
    assert per("pretrain_steps", "timm:resnet18:0, vit:5", names) == {"vit": 5, "resnet18": 0}
    assert per("pretrain_steps", "vit:900,resnet18:150", ["vit"]) == {"vit": 900}  # the default fits a vit-only run
    assert per("backbone_lr_scale", "vit:1,resnet18:0.25", names, float, gt=True) == {"vit": 1.0, "resnet18": 0.25}
    bad = [("vit:900", "no value for backbone.s. resnet18"), ("vit:9,vit:8,resnet18:1", "naming each backbone once"),
           ("vit:x,resnet18:1", "'x' is not a number"), ("900 150", "name:value"), (-1, "vit=-1 must be an integer >= 0"),
           ("vit:1.5,resnet18:1", "vit=1.5 must be an integer")]
    for value, message in bad:
        with pytest.raises(ConfigError, match="pretrain_steps") as e:
            per("pretrain_steps", value, names)
        assert e.match(message), (value, str(e.value))
    with pytest.raises(ConfigError, match="backbone_lr_scale: vit=0.0 must be a number > 0"):
        per("backbone_lr_scale", "vit:0,resnet18:1", names, float, gt=True)
