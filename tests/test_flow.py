"""Flow matching (rectified flow): the loss against its formula, training, oracle sampling, the recipe switch."""
import json

import pytest
import torch

import mmfm
from mmfm.config import ConfigError
from mmfm.diffusion import diffusion_loss, load_scheduler_config, make_sampler, sample, save_scheduler
from mmfm.diffusion.flow import (X_PRED_MIN_S, FlowEulerSampler, flow_interpolate, flow_prediction, is_flow_config,
                                 logit_normal, make_flow_scheduler, shift_sigmas)


def _recorder(pred):
    """A 'model' returning `pred` and remembering the (x_t, t) it was called with."""
    seen = {}

    def model(x, t, **cond):
        seen.update(x=x, t=t, **cond)
        return pred(x, t)

    model.parameters = lambda: iter([torch.zeros(1)])
    return model, seen


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_loss_matches_the_formula(shift):
    sch = make_flow_scheduler(shift)
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    zero, seen = _recorder(lambda x, t: torch.zeros_like(x))
    loss = diffusion_loss(zero, sch, x0, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # replay the draws: logit-normal times, then the noise
    s = shift_sigmas(torch.sigmoid(torch.randn(6, generator=g)), shift)
    noise = torch.randn(x0.shape, generator=g)
    torch.testing.assert_close(seen["t"], s * 1000)
    torch.testing.assert_close(seen["x"], (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise)
    torch.testing.assert_close(loss, ((noise - x0) ** 2).mean())  # target: the velocity noise - x0
    # a model that knows x0 reads the velocity off x_t exactly: zero loss
    oracle, _ = _recorder(lambda x, t: (x - x0) / (t / 1000).view(-1, 1, 1, 1))
    assert diffusion_loss(oracle, sch, x0, generator=torch.Generator().manual_seed(3)).item() < 1e-10


def test_logit_normal_and_shift():
    s = logit_normal(20000, generator=torch.Generator().manual_seed(0))
    assert 0 < s.min() and s.max() < 1 and abs(s.median().item() - 0.5) < 0.02
    assert (shift_sigmas(s, 3.0) > s).all() and torch.equal(shift_sigmas(s, 1.0), s)
    assert is_flow_config(make_flow_scheduler().config) and not is_flow_config(
        mmfm.diffusion.make_train_scheduler("sample").config)
    with pytest.raises(ValueError, match="shift"):
        make_flow_scheduler(0.0)


def test_flow_training_reduces_loss():
    torch.manual_seed(0)
    dit = mmfm.build_model("dit-test", depth=1)
    sch = make_flow_scheduler()
    x0 = torch.rand(8, 1, 16, 16) * 2 - 1
    y = torch.arange(8) % 10
    opt = torch.optim.Adam(dit.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def held_out():
        return diffusion_loss(dit, sch, x0, {"y": y}, 0.0, dit.null_label, torch.Generator().manual_seed(1)).item()

    first = held_out()
    for _ in range(30):
        loss = diffusion_loss(dit, sch, x0, {"y": y}, 0.2, dit.null_label, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(torch.tensor(first)) and held_out() < 0.8 * first


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("name", ["euler", "dpm++"])
def test_oracle_velocity_sampling_recovers_the_data(name, shift):
    """v = (x_s - x0) / s is the exact velocity towards a known x0: both flow samplers must land on x0."""
    x0 = torch.rand(2, 1, 8, 8) * 1.6 - 0.8
    oracle, _ = _recorder(lambda x, t: (x - x0) / (t.float() / 1000).view(-1, 1, 1, 1))
    sampler = make_sampler(name, make_flow_scheduler(shift).config)
    out = sample(oracle, sampler, x0.shape, steps=8, generator=torch.Generator().manual_seed(0))
    # DPM-Solver++ hands the model integer timesteps (round(1000 s)), so the oracle's s is off by < 5e-4
    torch.testing.assert_close(out, x0, atol=2e-3 if name == "euler" else 1e-2, rtol=0)


def test_flow_sampler_shapes_determinism_and_saved_config(tmp_path):
    dit = mmfm.build_model("dit-test", depth=1).eval()
    torch.nn.init.normal_(dit.final_layer.linear.weight, std=0.1)
    sch = make_flow_scheduler(2.0)
    save_scheduler(sch, tmp_path)
    cfg = load_scheduler_config(tmp_path)  # what gen_quality / dit_sample rebuild the sampler from
    assert json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == \
        "FlowMatchEulerDiscreteScheduler"
    assert isinstance(make_sampler("euler", cfg), FlowEulerSampler)
    for name in ("euler", "dpm++"):
        draws = [sample(dit, make_sampler(name, cfg), (3, 1, 16, 16), {"y": torch.tensor([0, 1, 2])}, 2.0, 4,
                        generator=torch.Generator().manual_seed(7)) for _ in range(2)]
        assert draws[0].shape == (3, 1, 16, 16) and torch.isfinite(draws[0]).all()
        assert torch.equal(draws[0], draws[1])
    with pytest.raises(ValueError, match="does not integrate a flow-matching model"):
        make_sampler("ddim", cfg)


def test_interpolation_endpoints():
    x0, noise = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    torch.testing.assert_close(flow_interpolate(x0, noise, torch.zeros(2)), x0)
    torch.testing.assert_close(flow_interpolate(x0, noise, torch.ones(2)), noise)


def test_recipe_flow_switch(tmp_path, monkeypatch):
    """Flow matching is the recipe's default (x-prediction, shift 3: round eleven's choice); the DDPM objectives
    are one flag away, and flags that only one kind reads are refused on the other."""
    from test_dit_train import TINY_DIT, fake_sources, load_recipe

    from mmfm.train import classify

    monkeypatch.setattr(classify, "DATASETS", fake_sources())
    dit_train = load_recipe("dit_train")
    bad = [(["sampler=ddim"], "sampler=ddim"),
           (["prediction_type=sample", "flow_shift=2"], "flow_shift=2 goes with prediction_type=flow, not sample"),
           (["prediction_type=epsilon", "flow_prediction=sample"], "flow_prediction=sample goes with prediction_type"),
           (["beta_schedule=linear"], "beta_schedule=linear goes with the DDPM objectives"),
           (["flow_prediction=x0"], "flow prediction 'x0'")]
    for flags, message in bad:
        with pytest.raises(ConfigError, match=message):
            dit_train.main(["--out", str(tmp_path / "a"), *TINY_DIT, *flags, "classifier=none"])
    m = dit_train.main(["--out", str(tmp_path / "d"), *TINY_DIT, "classifier=none", "sample_every=0"])
    cfg = load_scheduler_config(tmp_path / "d" / "model")
    assert m["steps"] == 3 and is_flow_config(cfg) and flow_prediction(cfg) == "sample" and cfg["shift"] == 3.0
    m = dit_train.main(["--out", str(tmp_path / "f"), *TINY_DIT, "flow_prediction=velocity", "flow_shift=1",
                        "sampler=euler", "classifier=none", "sample_every=0"])
    cfg = load_scheduler_config(tmp_path / "f" / "model")
    assert m["steps"] == 3 and (tmp_path / "f" / "samples.png").is_file()
    assert is_flow_config(cfg) and flow_prediction(cfg) == "velocity" and cfg["shift"] == 1.0
    dit_train.main(["--out", str(tmp_path / "x"), *TINY_DIT, "prediction_type=sample", "sampler=ddim",
                    "classifier=none", "sample_every=0"])
    assert load_scheduler_config(tmp_path / "x" / "model")["prediction_type"] == "sample"


def test_x_prediction_loss_matches_the_formula():
    """flow_prediction=sample: the network's x0_hat enters the velocity loss as (x_s - x0_hat) / max(s, 0.05)."""
    sch = make_flow_scheduler(1.0, prediction="sample")
    assert flow_prediction(sch.config) == "sample" and flow_prediction(make_flow_scheduler().config) == "velocity"
    x0 = torch.rand(6, 1, 8, 8) * 2 - 1
    zero, seen = _recorder(lambda x, t: torch.zeros_like(x))
    loss = diffusion_loss(zero, sch, x0, generator=torch.Generator().manual_seed(3))
    s = (seen["t"] / 1000).view(-1, 1, 1, 1)
    noise = (seen["x"] - (1 - s) * x0) / s
    torch.testing.assert_close(loss, ((seen["x"] / s.clamp(min=X_PRED_MIN_S) - (noise - x0)) ** 2).mean())
    oracle, _ = _recorder(lambda x, t: x0)  # the clean image itself: zero loss wherever s >= 0.05
    keep = torch.Generator().manual_seed(3)
    assert diffusion_loss(oracle, sch, x0, generator=keep).item() < 1e-10 or (s < X_PRED_MIN_S).any()
    with pytest.raises(ValueError, match="flow prediction 'eps'"):
        make_flow_scheduler(prediction="eps")


@pytest.mark.parametrize("name", ["euler", "dpm++"])
def test_oracle_x_prediction_sampling_recovers_the_data(name, tmp_path):
    """A model that outputs the data x0 (x-prediction) lands on x0 with both samplers, read from a saved config."""
    x0 = torch.rand(2, 1, 8, 8) * 1.6 - 0.8
    oracle, _ = _recorder(lambda x, t: x0.expand_as(x))
    save_scheduler(make_flow_scheduler(2.0, prediction="sample"), tmp_path)
    cfg = load_scheduler_config(tmp_path)
    assert flow_prediction(cfg) == "sample"
    out = sample(oracle, make_sampler(name, cfg), x0.shape, steps=6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x0, atol=1e-4, rtol=0)
    velocity = make_sampler(name, make_flow_scheduler(2.0).config)  # the same outputs read as velocities: not x0
    wrong = sample(oracle, velocity, x0.shape, steps=6, generator=torch.Generator().manual_seed(0))
    assert (wrong - x0).abs().max() > 0.1
