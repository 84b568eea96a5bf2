"""SigLIP's sigmoid loss (loss=siglip in recipes/clip_pretrain.py): the loss against open_clip's and against its
formula, the learnable logit bias saved with the model, and the recipe switch on tiny shards."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.loss import SigLipLoss as OpenClipSigLipLoss

import mmfm
from mmfm.data.imagetext import LabelSource, build_label_shards
from mmfm.losses.contrastive import SigLipLoss
from mmfm.train.clip import ClipTask, ClipTrain

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "clip_pretrain.py"


def test_siglip_loss_equals_open_clips_and_the_papers_formula():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 16), dim=-1), F.normalize(torch.randn(6, 16), dim=-1)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    got = SigLipLoss()(img, txt, scale, bias)
    assert torch.allclose(got, OpenClipSigLipLoss()(img, txt, scale, bias))
    labels = 2 * torch.eye(6) - 1  # +1 on the matching pairs, -1 elsewhere
    assert torch.allclose(got, -F.logsigmoid(labels * (scale * img @ txt.T + bias)).sum() / 6)


def test_logit_bias_is_a_saved_parameter_and_required_by_the_task(tmp_path):
    model = mmfm.build_model("clip-test", init_logit_bias=-10.0, init_logit_scale=math.log(10))
    assert isinstance(model.logit_bias, torch.nn.Parameter) and float(model.logit_bias) == -10.0
    model.save_pretrained(tmp_path / "m")
    assert float(mmfm.build_model(str(tmp_path / "m")).logit_bias) == -10.0
    assert mmfm.build_model("clip-test").logit_bias is None  # CLIP's loss: no bias
    with pytest.raises(ValueError, match="logit bias"):
        ClipTask(mmfm.build_model("clip-test"), ClipTrain(loss="siglip"), 10)


def _shards(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 2
    images = (rng.random((40, 28, 28)) * 60).astype(np.uint8)
    images[labels == 1, 8:20, 8:20] = 255
    src = LabelSource("toy", ["dark", "square"], ["d", "s"], ["a {name} image", "the {name} one"],
                      ["a {} picture."], loader=lambda: (images, labels))
    build_label_shards(tmp_path / "shards", sources=(src,), maxcount=20)
    return str(tmp_path / "shards" / "train-*.tar")


def run_tiny_recipe(tmp_path, loss: str) -> Path:
    """recipes/clip_pretrain.py with `loss` for 3 steps of clip-test on tiny shards -> its --out folder."""
    spec = importlib.util.spec_from_file_location("clip_pretrain", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    out = tmp_path / "run"
    recipe.main(["--data", _shards(tmp_path), "--out", str(out), "--preset", "clip-test", "--max-steps", "3",
                 "--no-probe", f"loss={loss}", "batch_size=8", "num_workers=0", "warmup=1", "img_size=28",
                 "patch_size=7", "in_chans=1", "image_mean=(0.5,)", "image_std=(0.5,)", "context_length=32",
                 "train_minutes=0"])
    return out


def test_recipe_trains_with_siglip_and_saves_the_bias(tmp_path):
    out = run_tiny_recipe(tmp_path, "siglip")
    model = mmfm.build_model(str(out / "model"))
    assert model.config.init_logit_bias == -10.0 and model.config.init_logit_scale == pytest.approx(math.log(10))
    assert float(model.logit_bias) != -10.0  # it learned (its gradient reached it)
    assert "zeroshot_top1/toy" in json.loads((out / "metrics.json").read_text())


def test_logit_bias_round_trips_through_open_clip():
    from mmfm.interop.open_clip import from_open_clip, to_open_clip

    model = mmfm.build_model("clip-test", init_logit_bias=-7.5)
    oc = to_open_clip(model)
    assert float(oc.logit_bias) == -7.5
    back = from_open_clip(oc)
    assert float(back.logit_bias) == -7.5
