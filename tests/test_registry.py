import pytest

import mmfm
from mmfm.config import ConfigError


def test_list_models_pattern():
    assert mmfm.list_models("gpt*") == sorted(n for n in mmfm.list_models() if n.startswith("gpt"))
    assert "vit-test" in mmfm.list_models("*-test")


def test_unknown_name_suggests_closest():
    with pytest.raises(ConfigError, match="closest: gpt-test"):
        mmfm.build_model("gpt-tset")


def test_unknown_override_suggests_field():
    with pytest.raises(ConfigError, match="n_layer"):
        mmfm.build_model("gpt-test", n_layers=3)


@pytest.mark.parametrize("kw, msg", [
    ({"n_layer": "four"}, "must be"),
    ({"n_layer": 2.5}, "must be"),
    ({"n_layer": 0}, "out of range"),
    ({"dropout": 1.5}, "out of range"),
    ({"mlp": "relu"}, "not in"),
    ({"n_embd": 33}, "divisible"),
    ({"tie_weights": 1}, "must be"),
])
def test_bad_override_values(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        mmfm.build_model("gpt-test", **kw)


def test_float_field_accepts_int():
    assert mmfm.build_model("vit-test", mlp_ratio=2).config.mlp_ratio == 2.0


def test_missing_folder_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="not a preset"):
        mmfm.build_model(tmp_path)


def test_config_json_is_data_not_code(tmp_path):
    (tmp_path / "config.json").write_text('{"family": "__import__(\'os\').system(\'echo hi\')", "config": {}}')
    with pytest.raises(ConfigError, match="unknown model family"):
        mmfm.build_model(tmp_path)
