"""Diffusion on any device: every random or constant tensor the diffusion code makes is created on the device
(and dtype) of the data or model it serves, never on the CPU and copied; evaluation follows the model."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.overrides import TorchFunctionMode

import mmfm
from mmfm.diffusion import diffusion_loss, drop_condition, make_sampler, make_train_scheduler, sample, save_scheduler

ROOT = Path(__file__).resolve().parents[1]
OURS = ("mmfm/diffusion/", "mmfm/eval/gen_quality.py", "mmfm/train/diffusion.py", "recipes/dit_sample.py")
FACTORIES = {"randn", "randint", "rand", "tensor", "zeros", "ones", "full", "arange", "empty"}


class CreatedOn(TorchFunctionMode):
    """Records (function, device=, dtype=) of each tensor factory called directly from the diffusion code."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
        if name in FACTORIES and any(part in caller for part in OURS):
            self.calls.append((name, kwargs.get("device"), kwargs.get("dtype")))
        return func(*args, **kwargs)


def _echo(x, t, **cond):
    return x


def test_objective_draws_timesteps_and_noise_on_x0_device_and_dtype():
    x0 = torch.rand(4, 1, 8, 8, dtype=torch.float64) * 2 - 1
    with CreatedOn() as seen:
        loss = diffusion_loss(_echo, make_train_scheduler(), x0, {"y": torch.tensor([0, 1, 2, 3])}, 0.5, 9)
    names = [c[0] for c in seen.calls]
    assert {"randint", "randn", "rand"} <= set(names), seen.calls
    for name, device, dtype in seen.calls:
        assert torch.device(device) == x0.device, (name, device)
    assert ("randn", x0.device, torch.float64) in seen.calls  # noise drawn in x0's dtype, not cast after
    assert torch.isfinite(loss)


def test_condition_dropout_mask_on_the_condition_device():
    cond = {"y": torch.arange(6), "text": torch.randn(6, 4)}
    with CreatedOn() as seen:
        out = drop_condition(cond, 1.0, 99)
    assert [c[:2] for c in seen.calls] == [("rand", cond["y"].device)]
    assert (out["y"] == 99).all() and (out["text"] == 0).all()


def test_sample_draws_initial_noise_where_asked():
    model = mmfm.build_model("dit-test", depth=1, input_size=8, patch_size=4, num_classes=3).eval()
    sched = make_sampler("ddim", make_train_scheduler().config)
    cond = {"y": torch.tensor([0, 1])}
    with CreatedOn() as seen:
        sample(model, sched, (2, model.config.in_channels, 8, 8), cond, 2.0, steps=2)
    assert [c[:2] for c in seen.calls] == [("randn", torch.device("cpu"))]  # the model's device, no generator
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = sample(model, sched, (2, model.config.in_channels, 8, 8), cond, 2.0, steps=2, generator=g1)
    b = sample(model, sched, (2, model.config.in_channels, 8, 8), cond, 2.0, steps=2,
               noise=torch.randn(2, model.config.in_channels, 8, 8, generator=g2))
    torch.testing.assert_close(a, b)  # a CPU generator's noise is its own draw, whatever the model's device


def test_prompt_retrieval_builds_its_constants_on_the_clip_device():
    from mmfm.diffusion.text import PromptConditioner, class_captions
    from mmfm.tokenizers import CharTokenizer

    names = ["seven", "cat"]
    captions, _ = class_captions(names)
    clip = mmfm.build_model("clip-test", img_size=28, patch_size=7, in_chans=1, image_mean=(0.5,), image_std=(0.5,),
                            context_length=48)
    clip.tokenizer = CharTokenizer.train("".join(c for caps in captions for c in caps))
    pc = PromptConditioner(clip, names)
    labels = torch.tensor([0, 1, 1])
    with CreatedOn() as seen:
        cond = pc.batch_condition((None, labels))
        top1 = pc.retrieval(torch.rand(3, 1, 28, 28) * 2 - 1, labels)
    assert sorted(c[0] for c in seen.calls) == ["randint", "tensor", "tensor"]
    assert all(device is not None and torch.device(device).type == "cpu" for _, device, _ in seen.calls), seen.calls
    assert cond["text"].shape == (3, pc.text_dim) and 0.0 <= top1 <= 1.0
    pc.to("meta")  # a stand-in accelerator: the tables and the tower move together, conditions follow the labels
    assert pc.condition(labels.to("meta"))["text"].device.type == "meta"
    assert next(pc.clip.parameters()).device.type == "meta"


def test_fid_sums_live_on_the_feature_device(monkeypatch):
    from torchmetrics.image.fid import FrechetInceptionDistance

    from mmfm.eval.gen_quality import ClassifierFeatures, frechet_distance

    vit = mmfm.build_model("vit-test", img_size=28, patch_size=7, in_chans=1, num_classes=4).to("meta")
    seen = []
    monkeypatch.setattr(FrechetInceptionDistance, "compute",
                        lambda self: seen.append(self.real_features_sum.device) or torch.tensor(0.0))
    frechet_distance(ClassifierFeatures(vit), torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28))
    assert seen == [torch.device("meta")]  # was: CPU sums updated with the classifier's (here meta) features


def test_sample_grid_samples_on_the_ema_models_device(tmp_path):
    """After fit Lightning moves the module to the CPU while the EMA copy stays on the accelerator: the grid's
    conditions must follow the model that samples, not pl_module.device."""
    from mmfm.train.diffusion import SampleGrid

    model = mmfm.build_model("dit-test", depth=1, input_size=8, patch_size=4, num_classes=2)
    seen = []
    model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs["y"].device), with_kwargs=True)
    pl_module = SimpleNamespace(model=model, device=torch.device("meta"), scheduler=make_train_scheduler())
    grid = SampleGrid(tmp_path, {"y": torch.arange(2)}, ["a", "b"], seeds=(0, 1), steps=2, sampler="ddim")
    path = grid.render(pl_module, tmp_path / "grid.png")
    assert path.stat().st_size > 500
    assert seen and set(seen) == {torch.device("cpu")}  # was: the labels sent to pl_module.device (here meta)


def _saved_dit(folder):
    model = mmfm.build_model("dit-test", depth=1, input_size=8, patch_size=4, num_classes=2)
    model.save_pretrained(folder)
    save_scheduler(make_train_scheduler(prediction_type="sample"), folder)
    (folder / "diffusion.json").write_text(json.dumps({"class_names": ["a", "b"], "text_encoder": ""}))
    return folder


def test_dit_sample_takes_device(tmp_path):
    from test_dit_train import load_recipe

    dit_sample = load_recipe("dit_sample")
    folder = _saved_dit(tmp_path / "dit")
    png = dit_sample.main(["--model", str(folder), "--device", "cpu", "--seeds", "2", "--steps", "2",
                           "--out", str(tmp_path / "s.png")])
    assert png.stat().st_size > 500
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="--device cuda"):
            dit_sample.main(["--model", str(folder), "--device", "cuda", "--out", str(tmp_path / "c.png")])
