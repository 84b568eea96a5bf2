"""Config dataclasses: typed fields with optional ranges/choices, checked overrides, JSON round trip."""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar


def opt(default: Any, lo: float | None = None, hi: float | None = None, choices: tuple | None = None,
        finite: bool = True, gt: float | None = None, lt: float | None = None):
    """A config field with a checked range (lo <= v <= hi, or strictly gt < v < lt) or a set of choices. Float
    values (and the floats in a tuple) must be finite unless `finite=False`; fields declared without `opt` are
    held to the same rule."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "choices": choices, "finite": finite,
                                            "gt": gt, "lt": lt})


class ConfigError(ValueError):
    """A bad preset name, override name, type or value."""


def closest(name: str, options) -> str:
    near = difflib.get_close_matches(name, list(options), n=5, cutoff=0.4)
    return f"; closest: {', '.join(near)}" if near else f"; choose from: {', '.join(sorted(options))}"


def _accepts(tp, value) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_accepts(args[0], v) for v in value)
        return not args or (len(args) == len(value) and all(_accepts(a, v) for a, v in zip(args, value)))
    return isinstance(value, tp if isinstance(tp, type) else object)


def _coerce(tp, value):
    """JSON gives lists for tuples and ints for floats; bring them back to the declared type."""
    if isinstance(value, list) and typing.get_origin(tp) in (tuple, None) and "tuple" in str(tp):
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _numbers(v) -> list:
    items = v if isinstance(v, (tuple, list)) else [v]
    return [x for x in items if isinstance(x, (int, float)) and not isinstance(x, bool)]


def check_value(owner: str, f: dataclasses.Field, tp, v) -> None:
    """`v` fits field `f` (declared type `tp`) of dataclass `owner`: type, choices, finiteness, range."""
    if not _accepts(tp, v):
        raise ConfigError(f"{owner}.{f.name} must be {tp.__name__ if isinstance(tp, type) else tp}, got {v!r} ({type(v).__name__})")
    lo, hi, gt, lt, choices = (f.metadata.get(k) for k in ("lo", "hi", "gt", "lt", "choices"))
    if choices is not None and v not in choices:
        raise ConfigError(f"{owner}.{f.name}={v!r} not in {choices}")
    for x in _numbers(v):
        if f.metadata.get("finite", True) and not math.isfinite(x):
            raise ConfigError(f"{owner}.{f.name}={v!r}: must be a finite number")
        if ((lo is not None and x < lo) or (hi is not None and x > hi) or (gt is not None and x <= gt)
                or (lt is not None and x >= lt)):
            low = f"({gt}" if gt is not None else f"[{lo}" if lo is not None else "(-inf"
            high = f"{lt})" if lt is not None else f"{hi}]" if hi is not None else "inf)"
            raise ConfigError(f"{owner}.{f.name}={v!r} out of range {low}, {high}")


def check_fields(obj, names=None) -> None:
    """Check every field of dataclass instance `obj` (or only `names`) against its declaration."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if names is None or f.name in names:
            check_value(type(obj).__name__, f, hints[f.name], getattr(obj, f.name))


def _hints(cls) -> dict:
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation its module cannot resolve: check what is a plain type
        return {f.name: f.type for f in dataclasses.fields(cls) if isinstance(f.type, type)}


def checked_override(obj, name: str, value):
    """`value` made fit for field `name` of dataclass instance `obj` (a JSON list -> tuple, an int -> float, a
    number -> text for a str field, since `key=2024` parses as a number) and checked like a config field."""
    f = next(f for f in dataclasses.fields(obj) if f.name == name)
    tp = _hints(type(obj)).get(name)
    if tp is None:
        return value
    if _accepts(tp, "") and not _accepts(tp, value) and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    value = _coerce(tp, value)
    check_value(type(obj).__name__, f, tp, value)
    return value


@dataclass
class ModelConfig:
    """Base of every model config. Subclasses set `family` and may extend `validate`."""

    family: ClassVar[str] = ""

    def validate(self) -> None:
        check_fields(self)

    def estimate_params(self) -> int | None:
        """About how many parameters (and persistent buffers) the model has; None where unknown."""
        return None

    def replace(self, **overrides) -> "ModelConfig":
        """A copy with overrides, names, types and ranges checked."""
        names = {f.name for f in dataclasses.fields(self)}
        for k in overrides:
            if k not in names:
                raise ConfigError(f"unknown {type(self).__name__} field {k!r}{closest(k, names)}")
        hints = typing.get_type_hints(type(self))
        cfg = dataclasses.replace(self, **{k: _coerce(hints[k], v) for k, v in overrides.items()})
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return cls().replace(**d)


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)
