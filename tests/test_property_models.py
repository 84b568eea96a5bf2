"""Property: any build_model override (valid, out of range, NaN, wrong type, huge) and any training override
either works (the model builds and runs a forward pass; the optimizer accepts the settings) or raises
ConfigError/ValueError/TypeError from mmfm's own code naming the argument; never an error from inside torch,
numpy or safetensors, and never more than a few seconds."""
import dataclasses
import math
import traceback
from datetime import timedelta
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mmfm
from mmfm.registry import get_config
from mmfm.train.clip import ClipTrain
from mmfm.train.lm import LMTrainConfig
from mmfm.train.recipe import parse_args, recipe_parser, split_overrides

MMFM = Path(mmfm.__file__).resolve().parent
PRESETS = ("gpt-test", "vit-test", "clip-test", "dit-test")
SETTINGS = settings(max_examples=40, deadline=timedelta(seconds=5), derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

values = st.one_of(
    st.integers(-3, 8), st.floats(-1.0, 2.0), st.sampled_from([0, 2, 4, 8, 16, 32, 64]),  # plausible
    st.sampled_from([math.nan, math.inf, -math.inf, 10**12, 10**30, -10**12, 1e300]),  # non-finite, huge
    st.sampled_from(["abc", "", None, True, False, [1, 2], (0.5,), (0.0, 0.0, 0.0), {"a": 1}]),  # wrong types
    st.sampled_from(["gelu", "swiglu", "rope", "rmsnorm", "mean", "cls", "bpe", "char"]),  # choices
)


def _assert_mmfm_error(e: BaseException, names) -> None:
    """`e` is a ConfigError/ValueError/TypeError raised in mmfm's own code whose message names an argument."""
    assert isinstance(e, (ValueError, TypeError)), f"{type(e).__name__}: {e}"
    last = Path(traceback.extract_tb(e.__traceback__)[-1].filename).resolve()
    assert MMFM in last.parents, f"raised in {last}, not in mmfm: {type(e).__name__}: {e}"
    assert any(n in str(e) for n in names), f"message names none of {sorted(names)}: {e}"


def _field_names(name: str) -> list[str]:
    return [f.name for f in dataclasses.fields(get_config(name))]


@st.composite
def model_overrides(draw):
    name = draw(st.sampled_from(PRESETS))
    keys = draw(st.lists(st.sampled_from(_field_names(name)), min_size=1, max_size=3, unique=True))
    return name, {k: draw(values) for k in keys}


@SETTINGS
@given(model_overrides())
def test_build_model_overrides_work_or_fail_clearly(case):
    name, kw = case
    try:
        model = mmfm.build_model(name, **kw).eval()
        with torch.no_grad():
            model(**model.example_inputs(batch_size=1))
    except Exception as e:  # noqa: BLE001 - the property is about which exceptions escape
        _assert_mmfm_error(e, kw)


train_keys = st.sampled_from(sorted({f.name for f in dataclasses.fields(LMTrainConfig)} | {"n_layer", "dropout",
                                    "model.n_embd", "train.lr", "train.n_layer", "no_such_key"}))
texts = st.sampled_from(["abc", "nan", "inf", "-inf", "-1", "0", "1", "3", "1e-3", "2.5", "1e30", "true",
                         "none", "[1,2]", "10**9", "99999999999999999999", "0.999", "1.0"])


@SETTINGS
@given(st.lists(st.tuples(train_keys, texts), min_size=1, max_size=3, unique_by=lambda kv: kv[0]))
def test_training_overrides_work_or_fail_clearly(pairs):
    argv = [f"{k}={v}" for k, v in pairs]
    try:
        args = parse_args(recipe_parser("t", "gpt-test", 10, "runs/t"), argv)
        routed = split_overrides(args.overrides, model=get_config("gpt-test"), train=LMTrainConfig())
        train = LMTrainConfig(**routed["train"])
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=train.lr, betas=(train.beta1, train.beta2),
                          weight_decay=train.weight_decay)
        torch.zeros(train.batch_size, train.warmup_steps % 7)  # sizes are usable as sizes
    except Exception as e:  # noqa: BLE001
        _assert_mmfm_error(e, {k.split(".")[-1] for k, _ in pairs})


@SETTINGS
@given(st.dictionaries(st.sampled_from([f.name for f in dataclasses.fields(ClipTrain)]), values, min_size=1,
                       max_size=3))
def test_clip_training_overrides_work_or_fail_clearly(kw):
    try:
        routed = split_overrides(kw, model=get_config("clip-test"), train=ClipTrain())
        train = ClipTrain(**routed["train"])
        torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=train.lr, betas=(0.9, train.beta2),
                          weight_decay=train.weight_decay)
        torch.zeros(train.batch_size, train.eval_batch % 3)
    except Exception as e:  # noqa: BLE001
        _assert_mmfm_error(e, kw)
