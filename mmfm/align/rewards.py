"""Rewards for RL, given the way TRL's `reward_funcs` are: a saved reward-model folder, or a Python function

    def my_reward(prompts, completions, **columns) -> list[float]

called with a batch of prompts (as the data file wrote them: strings, or lists of messages), the sampled
completions (strings; for conversational prompts, [{"role": "assistant", "content": ...}] as TRL passes them)
and every extra column of the prompt file as a list. `reward=a:f,b:g reward_weights=[1,0.5]` sums weighted
terms; a term of weight 0 is only logged. The arithmetic task's rewards are plain functions here.
"""
from __future__ import annotations

import importlib
import logging
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config import ConfigError

log = logging.getLogger(__name__)
ANSWER = re.compile(r"Answer: (-?\d+)")


def completion_text(completion) -> str:
    """A completion as text: a string, or the content of a list of messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion)


def exact_match(prompts, completions, answer, **_) -> list[float]:
    """1.0 when the completion's final `Answer: N` (or, without one, the whole stripped completion) equals the
    `answer` column, else 0.0."""
    out = []
    for c, a in zip(completions, answer):
        text = completion_text(c)
        found = ANSWER.findall(text)
        out.append(float(_same(found[-1] if found else text.strip(), str(a).strip())))
    return out


def _same(x: str, y: str) -> bool:
    """Equal as text, or as numbers when both are numbers ("014" == "14")."""
    try:
        return x == y or float(x) == float(y)
    except ValueError:
        return False


def format_reward(prompts, completions, **_) -> list[float]:
    """1.0 when the completion ends with `Answer: <integer>` (the task's answer format), else 0.0."""
    return [float(re.search(r"Answer: -?\d+\s*$", completion_text(c)) is not None) for c in completions]


@dataclass
class RewardTerm:
    name: str
    weight: float
    fn: Callable | None = None  # a reward function, or
    model: torch.nn.Module | None = None  # a RewardModel (scored on the chat ids by the trainer)


def _import_function(spec: str) -> Callable:
    module_name, _, fn_name = spec.rpartition(":")
    if not module_name or not fn_name:
        raise ConfigError(f"reward={spec!r}: expected a reward-model folder or module:function")
    cwd = os.getcwd()
    if cwd not in sys.path:  # `python recipes/ppo.py` puts recipes/ first, not the working directory
        sys.path.insert(1, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name and not module_name.startswith(f"{e.name}."):
            raise
        raise ConfigError(f"reward={spec!r}: no module {module_name!r} on the working directory ({cwd}) or "
                          f"PYTHONPATH") from None
    fn = getattr(module, fn_name, None)
    if fn is None:
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ConfigError(f"reward={spec!r}: module {module_name!r} ({getattr(module, '__file__', '?')}) has no "
                          f"function {fn_name!r}; it has {names}")
    if not callable(fn):
        raise ConfigError(f"reward={spec!r}: {module_name}.{fn_name} is a {type(fn).__name__}, not a function")
    return fn


def load_rewards(spec: str, weights=None) -> list[RewardTerm]:
    """`reward=` (comma-separated terms: reward-model folders or module:function) and `reward_weights=`
    (one per term; default all 1) -> reward terms."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"reward={spec!r}: expected a reward-model folder or module:function (comma-separated "
                          "for several)")
    items = [s.strip() for s in spec.split(",")]
    weights = [1.0] * len(items) if weights is None else weights
    if not isinstance(weights, (list, tuple)) or len(weights) != len(items) or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
        raise ConfigError(f"reward_weights={weights!r}: expected a list of {len(items)} finite numbers, one per "
                          f"reward term in reward={spec!r}")
    terms = []
    for item, w in zip(items, weights):
        if Path(item).is_dir():
            from .heads import RewardModel

            if not (Path(item) / "head.safetensors").is_file():
                raise ConfigError(f"reward={item!r}: the folder has no head.safetensors; a reward-model folder is "
                                  "what recipes/reward_model.py writes to <out>/model")
            terms.append(RewardTerm(Path(item).name, float(w), model=RewardModel.from_pretrained(item)))
        elif ":" in item:
            terms.append(RewardTerm(item.rpartition(":")[2], float(w), fn=_import_function(item)))
        else:
            raise ConfigError(f"reward={item!r}: no such reward-model folder, and not module:function")
    log.info("reward = %s", " + ".join(f"{t.weight:g} x {t.name}" for t in terms))
    return terms


def call_reward(term: RewardTerm, prompts: list, completions: list, columns: dict[str, list]) -> torch.Tensor:
    """Run one reward function on a batch -> (B,) float tensor; a wrong length or a non-number is an error
    that names the function."""
    values = term.fn(prompts, completions, **columns)
    name = getattr(term.fn, "__qualname__", term.name)
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"reward function {name} must return a list of floats, got {type(values).__name__}")
    if len(values) != len(completions):
        raise ValueError(f"reward function {name} returned {len(values)} values for {len(completions)} completions")
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
    if bad:
        raise TypeError(f"reward function {name} must return finite floats, got {bad[0]!r}")
    return torch.tensor([float(v) for v in values])
