"""recipes/clip_pretrain.py end to end for a few steps on tiny temp shards with clip-test."""
import importlib.util
import json
from pathlib import Path

import numpy as np

import mmfm
from mmfm.data.imagetext import LabelSource, build_label_shards

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "clip_pretrain.py"


def _recipe():
    spec = importlib.util.spec_from_file_location("clip_pretrain", RECIPE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _shards(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 2
    images = (rng.random((60, 28, 28)) * 60).astype(np.uint8)
    images[labels == 1, 8:20, 8:20] = 255  # class 1: a bright square
    src = LabelSource("toy", ["dark", "square"], ["d", "s"], ["a {name} image", "the {name} one"],
                      ["a {} picture."], loader=lambda: (images, labels))
    build_label_shards(tmp_path / "shards", sources=(src,), maxcount=20)
    return str(tmp_path / "shards" / "train-*.tar")


def test_recipe_end_to_end(tmp_path):
    data = _shards(tmp_path)
    out = tmp_path / "run"
    metrics = _recipe().main(["--data", data, "--out", str(out), "--preset", "clip-test", "--max-steps", "4",
                              "batch_size=8", "num_workers=0", "warmup=2", "img_size=28", "patch_size=7",
                              "in_chans=1", "image_mean=(0.5,)", "image_std=(0.5,)", "context_length=32"])
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("zeroshot_top1/toy", "zeroshot_top5/toy", "i2t_recall@1", "i2t_recall@5", "t2i_recall@1",
                "t2i_recall@5", "linear_probe/toy", "wall_s", "samples_per_s", "fit_s", "eval_s", "data_s"):
        assert key in saved, key
        assert saved[key] == metrics[key]
    assert saved["steps"] == 4 and saved["samples_seen"] == 32
    assert 0.0 <= saved["zeroshot_top1/toy"] <= 1.0 and saved["zeroshot_top5/toy"] == 1.0  # 2 classes
    assert (out / "clip_summary.png").stat().st_size > 5000
    model = mmfm.build_model(out / "model")
    assert model.tokenizer is not None and model.tokenizer.kind == "char"
    assert model.config.in_chans == 1 and model.config.eot_token_id == model.tokenizer.eos_id


def test_recipe_continues_from_a_saved_folder(tmp_path):
    data = _shards(tmp_path)
    first, second = tmp_path / "a", tmp_path / "b"
    common = ["--data", data, "--max-steps", "2", "--no-probe"]
    train = ["batch_size=8", "num_workers=0", "warmup=1"]
    _recipe().main(common + ["--out", str(first), "--preset", "clip-test"] + train
                   + ["img_size=28", "patch_size=7", "in_chans=1", "image_mean=(0.5,)", "image_std=(0.5,)",
                      "context_length=32"])
    metrics = _recipe().main(common + ["--out", str(second), "--preset", str(first / "model")] + train)
    assert metrics["steps"] == 2
    a, b = mmfm.build_model(first / "model"), mmfm.build_model(second / "model")
    assert a.config == b.config and a.tokenizer.encode("a dark image") == b.tokenizer.encode("a dark image")
