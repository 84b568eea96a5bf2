"""The shared optimizer / schedule builder (mmfm.train.optim)."""
import math

import pytest
import torch

from mmfm import build_model
from mmfm.train.optim import build_optimizer, build_scheduler, param_groups, warmup_cosine


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.head = torch.nn.Linear(4, 10)
        self.head.weight = self.emb.weight  # tied
        self.logit_scale = torch.nn.Parameter(torch.zeros(()))
        self.frozen = torch.nn.Parameter(torch.ones(3, 3), requires_grad=False)


def test_groups_by_name_tied_once_frozen_left_out():
    m = Tied()
    decay, no_decay = param_groups(m, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [id(p) for p in decay["params"]] == [id(m.emb.weight)]  # the tied matrix once
    assert {id(p) for p in no_decay["params"]} == {id(m.norm.weight), id(m.norm.bias), id(m.head.bias),
                                                   id(m.logit_scale)}


def test_name_rule_decides_for_flattened_views(monkeypatch):
    """Under FSDP the dims of a flattened view say nothing: the name alone decides."""
    import mmfm.train.optim as optim
    m = Tied()
    monkeypatch.setattr(optim, "_is_wrapped_by_fsdp", lambda model: True)
    m.emb.weight = torch.nn.Parameter(m.emb.weight.detach().flatten())  # a 1-D "view" of a matrix
    decay, no_decay = param_groups(m, 0.1)
    assert id(m.emb.weight) in {id(p) for p in decay["params"]}
    assert id(m.norm.weight) in {id(p) for p in no_decay["params"]}


@pytest.mark.parametrize("name", ["gpt-test", "clip-test", "vit-test", "dit-test"])
def test_groups_match_the_dims_rule_on_registered_models(name):
    """Same groups as the per-task copies had: decay exactly on the >= 2-dim parameters."""
    m = build_model(name)
    decay, no_decay = param_groups(m, 0.05)
    assert {id(p) for p in decay["params"]} == {id(p) for p in m.parameters() if p.dim() >= 2}
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in m.parameters() if p.dim() < 2}


def test_build_optimizer_settings():
    m = Tied()
    opt = build_optimizer(m, 1e-3, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["fused"] is True and opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-6
    assert build_optimizer(m, 1e-3, fused=False).defaults["fused"] is False


def test_warmup_cosine_values():
    f = warmup_cosine(10, 110, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)


def test_warmup_cosine_follows_the_time_budget():
    spent = [0.0]
    f = warmup_cosine(2, 1000, 0.0, progress=lambda: spent[0])
    assert f(10) > 0.99
    spent[0] = 0.5
    assert f(10) == pytest.approx(0.5)
    spent[0] = 1.5  # past the budget: the floor, not past it
    assert f(10) == pytest.approx(0.0)


def test_build_scheduler_is_a_per_step_lambda():
    opt = build_optimizer(Tied(), 1.0)
    d = build_scheduler(opt, 2, 10, 0.5)
    assert d["interval"] == "step" and isinstance(d["scheduler"], torch.optim.lr_scheduler.LambdaLR)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)  # step 0 of a 2-step warmup


def test_mixed_precision_with_gradient_clipping_gets_an_unfused_adamw(tmp_path):
    """Found on an H200: Lightning refuses to clip the gradients of a fused AdamW under mixed precision, so
    gpt_pretrain (grad_clip=1.0) crashed at its first step on CUDA (bf16-mixed); the same happens on the CPU."""
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gpt_pretrain", root / "recipes" / "gpt_pretrain.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    text = tmp_path / "notes.txt"
    text.write_text("\n\n".join(f"the quick brown fox {i} jumps over the lazy dog " * 8 for i in range(40)))
    recipe.main(["--data", str(text), "--out", str(tmp_path / "run"), "--preset", "gpt-test", "--max-steps", "2",
                 "--precision", "bf16-mixed", "time_budget_s=0", "block_size=16", "batch_size=2", "val_tokens=64",
                 "sample_tokens=0", "val_every=1000", "chunk_chars=200"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 2
