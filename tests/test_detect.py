"""Detection: canvases split by source image, boxes that survive augmentation, FCOS on both backbones at tiny shapes,
mAP on perfect predictions, save/load, and the recipe end to end."""
import json

import numpy as np
import pytest
import torch

from mmfm.detect import (CanvasConfig, DetectorConfig, augmentation, build_detector, canvas_sets, collate,
                         default_vit, load_detector, mean_ap, save_detector, split_sources)


def _fake_sources(n=60, seed=0):
    """Two small source sets of distinct squares/blobs (the packaged sets are tested by the split test)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        x0, y0 = rng.integers(2, 10, size=2)
        images[i, y0:y0 + 12, x0:x0 + 10] = 200 + i % 50
    return images, np.arange(n) % 10


@pytest.fixture(scope="module")
def tiny_sets():
    cfg = CanvasConfig(size=64, max_objects=3, min_scale=16, max_scale=28, n_train=32, n_val=4, n_test=8)
    return cfg, canvas_sets(cfg, seed=0, sources=split_sources(cfg, 0, _fake_sources(), _fake_sources(40, 1)))


def test_split_by_source_image_no_test_source_in_training():
    cfg = CanvasConfig(n_train=200, n_test=100)
    src = split_sources(cfg, seed=0)  # the real MNIST-5k digits and animal silhouettes
    train, val, test = (set(src[s].ids) for s in ("train", "val", "test"))
    assert not (train & test) and not (train & val) and not (val & test)
    assert len(test) == 500 + 1000 and len(train) == 4000 + 8000
    sets = canvas_sets(cfg, seed=0, augment=False, sources=src)
    seen_train = {i for k in range(200) for i in sets["train"].raw(k)[3]}
    seen_test = {i for k in range(100) for i in sets["test"].raw(k)[3]}
    assert seen_test and seen_train and not (seen_train & seen_test) and seen_test <= test


def test_canvas_boxes_are_tight_around_the_pasted_pixels(tiny_sets):
    cfg, sets = tiny_sets
    canvas, boxes, labels, _ = sets["test"].raw(0)
    assert len(boxes) == len(labels) >= 1 and canvas.shape == (64, 64)
    for x0, y0, x1, y1 in boxes.astype(int):
        inside = canvas[y0:y1, x0:x1]
        assert inside[0].max() >= 32 and inside[-1].max() >= 32 and inside[:, 0].max() >= 32 and inside[:, -1].max() >= 32


def _extent(image: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(image[0] > 0.3, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def test_boxes_survive_flip_and_resize():
    """One object on a canvas: after a (forced) horizontal flip and a resize, the transformed box still frames the
    object's pixels (within interpolation blur)."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    img = torch.zeros(1, 64, 64)
    img[0, 10:30, 5:20] = 1.0  # an object at x 5..20, y 10..30
    box = tv_tensors.BoundingBoxes(torch.tensor([[5.0, 10.0, 20.0, 30.0]]), format="XYXY", canvas_size=(64, 64))
    chain = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.Resize((96, 96), antialias=True)])
    out, target = chain(tv_tensors.Image(img), {"boxes": box, "labels": torch.tensor([3])})
    assert out.shape[-2:] == (96, 96) and target["labels"].tolist() == [3]
    expected = torch.tensor([(64 - 20) * 1.5, 10 * 1.5, (64 - 5) * 1.5, 30 * 1.5])
    assert torch.allclose(target["boxes"][0].as_subclass(torch.Tensor), expected)
    assert torch.allclose(_extent(out), expected, atol=1.5)
    # the recipe's own chain (random shift/zoom, flip on): the box follows the pixels wherever they go
    torch.manual_seed(0)
    for _ in range(5):
        out, target = augmentation(64, flip=True)(tv_tensors.Image(img), {"boxes": box, "labels": torch.tensor([3])})
        assert torch.allclose(_extent(out), target["boxes"][0].as_subclass(torch.Tensor), atol=2.0)


@pytest.mark.parametrize("backbone", ["vit", "timm:resnet18"])
def test_fcos_trains_and_predicts_at_tiny_shapes(tiny_sets, backbone, tmp_path):
    cfg, sets = tiny_sets
    dcfg = DetectorConfig(backbone=backbone, img_size=64, channels=32, head_convs=1)
    vit = default_vit(dcfg, dim=32, depth=1, n_heads=2) if backbone == "vit" else None
    model = build_detector(dcfg, vit)
    images, targets = collate([sets["train"][i] for i in range(4)])
    losses = model(list(images), targets)
    assert set(losses) == {"classification", "bbox_regression", "bbox_ctrness"}
    sum(losses.values()).backward()
    trunk = model.backbone.vit if backbone == "vit" else model.backbone.body
    assert all(p.grad is not None for p in trunk.parameters())
    model.eval()
    with torch.no_grad():
        out = model(list(images))
    assert len(out) == 4 and all(o["boxes"].shape[1] == 4 for o in out)
    save_detector(model, dcfg, tmp_path / "det")
    loaded, lcfg = load_detector(tmp_path / "det")
    assert lcfg == dcfg
    with torch.no_grad():
        again = loaded(list(images))
    assert torch.allclose(again[0]["scores"], out[0]["scores"])


def test_mean_ap_of_perfect_and_wrong_predictions():
    t = [{"boxes": torch.tensor([[10.0, 10.0, 30.0, 30.0]]), "labels": torch.tensor([2])}]
    perfect = [{"boxes": t[0]["boxes"], "scores": torch.tensor([0.9]), "labels": torch.tensor([2])}]
    wrong = [{"boxes": t[0]["boxes"], "scores": torch.tensor([0.9]), "labels": torch.tensor([5])}]
    assert mean_ap(perfect, t)["map_50"] == 1.0 and mean_ap(wrong, t)["map_50"] == 0.0


def test_bad_config_named():
    with pytest.raises(ValueError, match="channels"):
        DetectorConfig(channels=48)
    with pytest.raises(ValueError, match="backbone"):
        DetectorConfig(backbone="resnet18")
    with pytest.raises(ValueError, match="strides"):
        DetectorConfig(backbone="timm:resnet18", strides=(8, 12))
    with pytest.raises(ValueError, match="max_scale"):
        CanvasConfig(size=32, max_scale=40)


def test_recipe_end_to_end_tiny(tmp_path):
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("detect_recipe", Path(__file__).parents[1] / "recipes/detect.py")
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = recipe  # dataclasses look their module up while the file executes
    spec.loader.exec_module(recipe)
    out = tmp_path / "run"
    m = recipe.main(["--out", str(out), "--max-steps", "2", "backbones=vit", "n_val=2", "n_test=4", "batch_size=2",
                     "dim=32", "depth=1", "n_heads=2", "channels=32", "head_convs=1", "size=64", "max_scale=28",
                     "pretrain_steps=0", "progress=false"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test/map_50"] == m["test/vit/map_50"] and 0 <= saved["test/map"] <= 1
    assert saved["two_stage/vit"] is False and "test/vit/fcos/map_50" not in saved  # no pretraining: FCOS alone
    assert (out / "detections_vit.png").stat().st_size > 0 and (out / "vit" / "model.safetensors").is_file()
    with pytest.raises(Exception, match="img_size"):
        recipe.main(["--out", str(out / "bad"), "img_size=64"])
