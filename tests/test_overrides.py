"""key=value overrides: parsed values, step counts, training-config type and range checks, and keys that two
configs share (qualified as model.KEY= / train.KEY=)."""
import math
from dataclasses import dataclass

import pytest

import mmfm
from mmfm.config import ConfigError, opt
from mmfm.train.clip import ClipTrain
from mmfm.train.lm import LMTrainConfig
from mmfm.train.recipe import parse_args, parse_value, recipe_parser, split_overrides


def _parser():
    return recipe_parser("test", "gpt-test", 10, "runs/x")


def test_parse_value_reads_nan_and_inf_as_floats():
    assert math.isnan(parse_value("nan")) and parse_value("-inf") == -math.inf and parse_value("Infinity") == math.inf
    assert parse_value("3") == 3 and parse_value("1e-3") == 1e-3 and parse_value("abc") == "abc"
    assert parse_value("true") is True and parse_value("none") is None and parse_value("[1,2]") == [1, 2]


@pytest.mark.parametrize("argv, msg", [
    (["--max-steps", "-1"], "--max-steps must be a positive number, got -1; to train by time"),
    (["--max-steps", "0"], "--max-steps must be a positive number, got 0"),
    (["--max-steps", "-7"], "got -7"),
    (["--devices", "0"], "--devices must be a positive number"),
    (["--ckpt-every", "0"], "--ckpt-every must be a positive number"),
])
def test_non_positive_counts_are_refused(argv, msg, capsys):
    with pytest.raises(SystemExit):
        parse_args(_parser(), argv)
    assert msg in capsys.readouterr().err


def test_positive_counts_parse():
    args = parse_args(_parser(), ["--max-steps", "5", "lr=1e-3"])
    assert args.max_steps == 5 and args.overrides == {"lr": 1e-3}


@pytest.mark.parametrize("key, value, msg", [
    ("lr", "abc", r"LMTrainConfig.lr must be float, got 'abc' \(str\)"),
    ("lr", "nan", r"LMTrainConfig.lr=nan: must be a finite number"),
    ("lr", "inf", r"LMTrainConfig.lr=inf"),
    ("lr", "-1e-3", r"LMTrainConfig.lr=-0.001 out of range"),
    ("lr", "0", r"LMTrainConfig.lr=0.0 out of range \(0.0, inf\)"),
    ("batch_size", "-1", r"LMTrainConfig.batch_size=-1 out of range \[1, inf\)"),
    ("batch_size", "2.5", r"LMTrainConfig.batch_size must be int"),
    ("beta2", "1.5", r"beta2=1.5 out of range \[0.0, 1.0\)"),
    ("compile", "3", r"compile must be bool"),
    ("warmup_steps", "-5", r"warmup_steps=-5 out of range"),
])
def test_training_overrides_are_checked(key, value, msg):
    pairs = parse_args(_parser(), [f"{key}={value}"]).overrides
    with pytest.raises(ConfigError, match=msg):
        split_overrides(pairs, model=mmfm.registry.get_config("gpt-test"), train=LMTrainConfig())


@pytest.mark.parametrize("key, value", [("lr", "0"), ("batch_size", "-1"), ("lr", "nan"), ("warmup", "-1"),
                                        ("max_bad_fraction", "2")])
def test_clip_training_overrides_are_checked(key, value):
    with pytest.raises(ConfigError, match=f"ClipTrain.{key}"):
        split_overrides({key: parse_value(value)}, model=mmfm.registry.get_config("clip-test"), train=ClipTrain())


def test_valid_overrides_route_and_coerce():
    routed = split_overrides({"lr": 1, "n_layer": 3, "data": 2024, "time_budget_s": 0},
                             model=mmfm.registry.get_config("gpt-test"), train=LMTrainConfig())
    assert routed == {"model": {"n_layer": 3}, "train": {"lr": 1.0, "data": "2024", "time_budget_s": 0.0}}
    assert isinstance(routed["train"]["lr"], float)
    LMTrainConfig(**routed["train"])


def test_model_overrides_are_checked_when_routed():
    with pytest.raises(ConfigError, match="GPTConfig.dropout=nan"):
        split_overrides({"dropout": float("nan")}, model=mmfm.registry.get_config("gpt-test"), train=LMTrainConfig())


@dataclass
class _Train:
    img_size: int = opt(0, lo=0)
    lr: float = opt(1e-3, lo=0.0)


def test_shared_key_must_be_qualified():
    model = mmfm.registry.get_config("vit-test")
    with pytest.raises(ConfigError, match=r"'img_size' is ambiguous: model and train both have it; write "
                                          r"model.img_size=... or train.img_size=..."):
        split_overrides({"img_size": 64}, model=model, train=_Train())
    routed = split_overrides({"train.img_size": 64, "model.depth": 3, "lr": 0.1}, model=model, train=_Train())
    assert routed == {"model": {"depth": 3}, "train": {"img_size": 64, "lr": 0.1}}
    assert split_overrides({"model.img_size": 64}, model=model, train=_Train())["model"] == {"img_size": 64}


def test_qualified_key_must_exist_in_its_target():
    with pytest.raises(ConfigError, match=r"unknown override 'train.depth': train has no 'depth'"):
        split_overrides({"train.depth": 3}, model=mmfm.registry.get_config("vit-test"), train=_Train())
    with pytest.raises(ConfigError, match=r"unknown override 'lrr'.*closest: lr"):
        split_overrides({"lrr": 3}, model=mmfm.registry.get_config("vit-test"), train=_Train())


def test_qualified_keys_through_parse_args():
    args = parse_args(_parser(), ["train.img-size=64", "--max-steps", "3", "model.depth=3"])
    assert args.overrides == {"train.img_size": 64, "model.depth": 3}


def test_name_sets_route_without_type_checks():
    assert split_overrides({"a": "x"}, run={"a", "b"}) == {"run": {"a": "x"}}
