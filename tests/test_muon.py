"""optimizer='muon' in the one optimizer builder: torch.optim.Muon for the stack's hidden matrices, AdamW for the
rest; every parameter in exactly one group; it trains; the GPT recipe runs, checkpoints both states and resumes
with it. Exact continuation is tested on the optimizer's state dict: the recipe test changes --max-steps between
its halves, and with it the cosine schedule."""
from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import mmfm
from mmfm.data.tokens import build_token_files
from mmfm.train.optim import MuonAdamW, build_optimizer, build_scheduler, muon_params

ROOT = Path(__file__).resolve().parents[1]


def _gpt(**kw):
    torch.manual_seed(0)
    return mmfm.build_model("gpt-test", pos="rope", **kw)


@pytest.mark.parametrize("tie", [True, False])
def test_every_parameter_in_exactly_one_group_and_the_right_one(tie):
    model = _gpt(tie_weights=tie, qk_norm=True)
    opt = build_optimizer(model, 1e-3, 0.1, optimizer="muon")
    assert isinstance(opt, MuonAdamW)
    in_muon = [p for g in opt.muon.param_groups for p in g["params"]]
    in_adamw = [p for g in opt.adamw.param_groups for p in g["params"]]
    ids = [id(p) for p in in_muon + in_adamw]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
    muon_names = {n for n, p in model.named_parameters() if any(p is q for q in in_muon)}
    expected = {n for n, _ in model.named_parameters()
                if n.startswith("transformer.blocks.") and n.endswith(("qkv.weight", "proj.weight", "fc1.weight",
                                                                       "fc2.weight"))}
    assert muon_names == expected and len(expected) == 4 * model.config.n_layer
    assert all(p.dim() == 2 for p in in_muon)
    adamw_names = {n for n, _ in model.named_parameters()} - muon_names
    assert "wte.weight" in adamw_names and ("lm_head.weight" in adamw_names) == (not tie)
    assert any("q_norm" in n for n in adamw_names) and any("norm1" in n for n in adamw_names)
    assert [p for p in opt.param_groups[0]["params"]] == in_muon  # one param_groups list: the scheduler's view
    assert opt.muon.param_groups[0]["lr"] == 0.02 and opt.adamw.param_groups[0]["lr"] == 1e-3


def test_muon_lowers_the_loss_and_the_schedule_scales_both():
    model = _gpt()
    opt = build_optimizer(model, 3e-3, 0.1, optimizer="muon")
    sched = build_scheduler(opt, warmup=2, total=20)["scheduler"]
    assert opt.muon.param_groups[0]["lr"] == pytest.approx(0.01) and opt.adamw.param_groups[0]["lr"] == 1.5e-3
    idx = torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.5
    assert all(opt.muon.state[p]["momentum_buffer"].abs().sum() > 0 for p in muon_params(model))


def test_bad_optimizer_arguments_are_named():
    model = _gpt()
    with pytest.raises(ValueError, match="optimizer='sgd'"):
        build_optimizer(model, 1e-3, optimizer="sgd")
    with pytest.raises(ValueError, match="muon_lr"):
        build_optimizer(model, 1e-3, optimizer="adamw", muon_lr=0.05)
    with pytest.raises(ValueError, match="Transformer stack"):
        build_optimizer(torch.nn.Linear(4, 4), 1e-3, optimizer="muon")


def _recipe():
    spec = importlib.util.spec_from_file_location("recipe_gpt_pretrain_muon", ROOT / "recipes" / "gpt_pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_state_dict_round_trip_continues_exactly():
    """Saving MuonAdamW after two steps and loading it into a fresh copy gives the same third step."""
    idx = torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(0))

    def step(model, opt):
        F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model = _gpt(tie_weights=False)
    opt = build_optimizer(model, 3e-3, 0.1, optimizer="muon")
    step(model, opt), step(model, opt)
    twin = _gpt(tie_weights=False)
    twin.load_state_dict(model.state_dict())
    twin_opt = build_optimizer(twin, 1e-4, 0.1, optimizer="muon", muon_lr=0.5)  # lrs come from the state
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # as from a file: no shared tensors
    assert twin_opt.muon.param_groups[0]["lr"] == 0.02 and twin_opt.adamw.param_groups[0]["lr"] == 3e-3
    assert len(twin_opt.state) == len(list(model.parameters()))  # momentum and Adam moments, every parameter
    step(model, opt), step(twin, twin_opt)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))


def test_gpt_recipe_with_muon_saves_and_resumes(tmp_path):
    data = tmp_path / "data"
    build_token_files("".join(f"KING:\nMy lord {i}, the night is long.\n\n" for i in range(200)), data, "char")
    common = ["--preset", "gpt-test", f"data={data}", "block_size=16", "batch_size=2", "val_every=1000",
              "val_tokens=64", "final_val_tokens=128", "sample_tokens=0", "time_budget_s=0", "warmup_steps=1",
              "optimizer=muon", "muon_lr=0.03", "--ckpt-every", "1"]
    recipe = _recipe()
    recipe.main(["--out", str(tmp_path / "run"), "--max-steps", "2", *common])
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    saved = ckpt["optimizer_states"][0]
    assert set(saved) == {"muon", "adamw"} and saved["muon"]["state"] and saved["adamw"]["state"]
    assert saved["muon"]["param_groups"][0]["initial_lr"] == 0.03
    metrics = recipe.main(["--out", str(tmp_path / "run"), "--max-steps", "4", "--resume", str(tmp_path / "run"),
                           *common])
    assert metrics["steps"] == 4 and metrics["train_config"]["optimizer"] == "muon"
    assert metrics["val_loss"] < math.log(mmfm.build_model(tmp_path / "run" / "model").config.vocab_size)
