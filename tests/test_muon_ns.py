"""mmfm.train.muon: torch's Muon with the Newton-Schulz iteration in the dtype the hardware is fast at."""
from __future__ import annotations

import copy

import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz

import mmfm
from mmfm.train import muon as muon_mod
from mmfm.train.muon import Muon, newton_schulz, resolve_ns_dtype
from mmfm.train.optim import build_optimizer

COEFFS = (3.4445, -4.7750, 2.0315)


@pytest.mark.parametrize("shape", [(24, 8), (8, 8), (8, 24)])
def test_newton_schulz_is_torchs_iteration_in_the_given_dtype(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    torch_bf16 = _zeropower_via_newtonschulz(g, COEFFS, 5, 1e-7)
    assert torch.equal(newton_schulz(g, COEFFS, 5, 1e-7, torch.bfloat16), torch_bf16)
    x = newton_schulz(g, COEFFS, 5, 1e-7, torch.float32)
    assert x.dtype == torch.float32 and x.shape == g.shape
    short = min(shape)
    s = torch.linalg.svdvals(x.double())
    assert s.shape == (short,) and s.min() > 0.5 and s.max() < 1.5  # roughly orthogonal (Muon's US'V^T)


def test_auto_picks_bf16_on_amx_cuda_and_fp32_on_other_cpus(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(muon_mod, "auto_cpu_precision", lambda: "32-true")
    assert resolve_ns_dtype("auto", cpu) == torch.float32
    monkeypatch.setattr(muon_mod, "auto_cpu_precision", lambda: "bf16-mixed")
    assert resolve_ns_dtype("auto", cpu) == torch.bfloat16
    assert resolve_ns_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_ns_dtype("fp32", torch.device("cuda")) == torch.float32
    assert resolve_ns_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="muon_ns='fp16'"):
        resolve_ns_dtype("fp16", cpu)
    with pytest.raises(ValueError, match="muon_ns='half'"):
        Muon([torch.nn.Parameter(torch.zeros(2, 2))], ns_dtype="half")


def _steps(opt, params, grads):
    for g in grads:
        for p, gi in zip(params, g):
            p.grad = gi.clone()
        opt.step()
    return [p.detach().clone() for p in params]


def test_bf16_is_torchs_step_and_fp32_matches_it_to_bf16_precision():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(16, 8)), torch.nn.Parameter(torch.randn(8, 8))]
    grads = [[torch.randn_like(p) for p in params] for _ in range(3)]
    kw = dict(lr=0.02, weight_decay=0.1)
    ref_p = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ref = _steps(torch.optim.Muon(ref_p, **kw), ref_p, grads)
    bf_p = [torch.nn.Parameter(p.detach().clone()) for p in params]
    bf = _steps(Muon(bf_p, ns_dtype="bf16", **kw), bf_p, grads)
    fp_p = [torch.nn.Parameter(p.detach().clone()) for p in params]
    fp_opt = Muon(fp_p, ns_dtype="fp32", **kw)
    fp = _steps(fp_opt, fp_p, grads)
    assert all(torch.equal(a, b) for a, b in zip(ref, bf))
    moved = [(a - p).abs().max() for a, p in zip(ref, params)]
    assert all(m > 0.01 for m in moved)
    assert all((a - b).abs().max() < 0.05 * m for a, b, m in zip(ref, fp, moved))
    assert fp_opt._dtype == torch.float32
    resumed = Muon([torch.nn.Parameter(p.detach().clone()) for p in fp_p], ns_dtype="fp32", **kw)
    resumed.load_state_dict(copy.deepcopy(fp_opt.state_dict()))  # momentum buffers travel in torch's state dict
    assert all(torch.equal(resumed.state[q]["momentum_buffer"], fp_opt.state[p]["momentum_buffer"])
               for q, p in zip(resumed.param_groups[0]["params"], fp_p))


def test_build_optimizer_passes_muon_ns_and_refuses_it_without_muon():
    model = mmfm.build_model("gpt-test")
    opt = build_optimizer(model, 1e-3, 0.1, optimizer="muon", muon_ns="fp32")
    assert isinstance(opt.muon, Muon) and opt.muon.ns_dtype == "fp32"
    with pytest.raises(ValueError, match="muon_ns='fp32' is used by optimizer='muon' only"):
        build_optimizer(model, 1e-3, optimizer="adamw", muon_ns="fp32")


def test_lm_task_refuses_muon_ns_without_muon():
    from mmfm.config import check_fields
    from mmfm.train.lm import LMTask, LMTrainConfig

    with pytest.raises(ValueError, match="muon_ns=fp32 is used by optimizer=muon only"):
        LMTask(mmfm.build_model("gpt-test"), LMTrainConfig(optimizer="adamw", muon_ns="fp32"), max_steps=2)
    with pytest.raises(ValueError, match="muon_ns"):
        check_fields(LMTrainConfig(optimizer="muon", muon_ns="fp16"))


def test_auto_is_muon_for_a_stack_and_adamw_where_muon_does_not_apply(monkeypatch):
    from mmfm.train import optim
    from mmfm.train.lm import LMTrainConfig
    from mmfm.train.optim import MuonAdamW, resolve_optimizer

    assert LMTrainConfig().optimizer == "auto"
    gpt = mmfm.build_model("gpt-test")
    assert isinstance(build_optimizer(gpt, 1e-3, 0.1, optimizer="auto"), MuonAdamW)
    plain = build_optimizer(torch.nn.Linear(4, 4), 1e-3, optimizer="auto")  # no Transformer stack
    assert isinstance(plain, torch.optim.AdamW)
    assert resolve_optimizer(gpt, "auto", {"transformer": 0.5}) == "adamw"  # per-module lr scales are AdamW's
    monkeypatch.setattr(optim, "_is_sharded", lambda model: True)
    assert resolve_optimizer(gpt, "auto") == "adamw"
    with pytest.raises(ValueError, match="FSDP"):
        resolve_optimizer(gpt, "muon")
