"""Config values that used to validate and break later, config.json errors, preset names vs folders, and the
memory estimate that refuses a model before allocating it."""
import math

import pytest
import torch

import mmfm
from mmfm import registry
from mmfm.config import ConfigError

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("name, kw, msg", [
    ("gpt-test", {"norm_eps": NAN}, "norm_eps=nan: must be a finite"),
    ("gpt-test", {"dropout": NAN}, "dropout=nan: must be a finite"),
    ("gpt-test", {"mlp_ratio": INF}, "mlp_ratio=inf: must be a finite"),
    ("gpt-test", {"rope_base": -INF}, "rope_base=-inf"),
    ("gpt-test", {"pos": "rope", "n_embd": 30, "n_head": 2}, "even head width"),
    ("vit-test", {"ls_init": NAN}, "ls_init=nan"),
    ("vit-test", {"drop_path": INF}, "drop_path=inf"),
    ("clip-test", {"init_logit_scale": NAN}, "init_logit_scale=nan"),
    ("clip-test", {"init_logit_scale": 100.0}, "out of range"),
    ("clip-test", {"image_std": (0.0, 0.2, 0.2)}, "image_std=.* must be > 0"),
    ("clip-test", {"image_mean": (0.5, NAN, 0.5)}, "image_mean=.*finite"),
    ("clip-test", {"image_mean": ("a", "b", "c")}, r"image_mean must be tuple\[float"),
    ("clip-test", {"eot_token_id": 512}, "eot_token_id=512 is outside the vocabulary"),
    ("clip-test", {"vision_heads": 3}, "vision_width=32 must be divisible by vision_heads=3"),
    ("clip-test", {"img_size": 36}, "img_size=36 not divisible by patch_size=8"),
    ("dit-test", {"mlp_ratio": NAN}, "mlp_ratio=nan"),
])
def test_values_that_break_later_are_refused(name, kw, msg):
    with pytest.raises(ConfigError, match=msg):
        mmfm.build_model(name, **kw)


def test_every_preset_still_validates():
    for name in mmfm.list_models():
        registry.get_config(name).validate()


def test_a_field_may_allow_non_finite_values():
    from dataclasses import dataclass

    from mmfm.config import ModelConfig, opt

    @dataclass
    class C(ModelConfig):
        a: float = opt(1.0, finite=False)
        b: float = 1.0

    assert math.isinf(C().replace(a=INF).a)
    with pytest.raises(ConfigError, match="C.b=nan: must be a finite"):
        C().replace(b=NAN)


def test_config_json_not_json_names_the_file(tmp_path):
    mmfm.build_model("gpt-test").save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text('{"family": "gpt", "config": {')
    with pytest.raises(ConfigError, match=r"m/config.json: not valid JSON \(line 1"):
        mmfm.build_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(ConfigError, match=r"config.json: not UTF-8"):
        mmfm.build_model(tmp_path / "m")


def test_config_json_bad_value_names_the_file(tmp_path):
    mmfm.build_model("gpt-test").save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text('{"family": "gpt", "config": {"norm_eps": NaN}}')
    with pytest.raises(ConfigError, match=r"m/config.json: GPTConfig.norm_eps=nan"):
        mmfm.build_model(tmp_path / "m")


def test_empty_folder_named_like_a_preset_builds_the_preset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gpt-test").mkdir()
    assert type(mmfm.build_model("gpt-test")).__name__ == "GPT"


def test_saved_folder_named_like_another_preset_is_ambiguous(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mmfm.build_model("gpt-test").save_pretrained("vit-test")
    with pytest.raises(ConfigError, match=r"'vit-test' is both a preset and a saved model folder.*'\./vit-test'"):
        mmfm.build_model("vit-test")
    assert type(mmfm.build_model("./vit-test")).__name__ == "GPT"
    from pathlib import Path

    assert type(mmfm.build_model(Path("vit-test"))).__name__ == "GPT"


def test_estimate_matches_the_real_parameter_count():
    for name in mmfm.list_models():
        with torch.device("meta"):
            model = mmfm.build_model(name)
        real = model.num_params() + sum(b.numel() for b in model.buffers())
        assert abs(model.config.estimate_params() / real - 1) < 0.01, name


def test_model_too_big_for_memory_is_refused_before_allocating(monkeypatch):
    monkeypatch.setattr(registry, "available_memory", lambda: 2**30)
    with pytest.raises(ConfigError, match=r"about 12,7\d\d,\d{3},\d{3} parameters: 47.\d GiB .* 1.0 GiB of memory"):
        mmfm.build_model("gpt-test", n_layer=10**6)
    mmfm.build_model("gpt-test", n_layer=3)


def test_absurd_sizes_are_refused_with_real_memory():
    for kw in ({"n_layer": 10**9}, {"vocab_size": 10**30}, {"n_embd": 2**40, "n_head": 1}):
        with pytest.raises(ConfigError, match="GiB of memory available"):
            mmfm.build_model("gpt-test", **kw)
    with pytest.raises(ConfigError, match="GiB of memory available"):
        mmfm.build_model("vit-test", img_size=8 * 10**6)


def test_available_memory_is_plausible():
    assert 2**20 < registry.available_memory() < 2**50


def test_name_of_the_wrong_type_is_refused():
    with pytest.raises(TypeError, match="preset name or a folder path, got int"):
        mmfm.build_model(123)
