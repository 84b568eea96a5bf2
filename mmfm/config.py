"""Config dataclasses: typed fields with optional ranges/choices, checked overrides, JSON round trip."""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar


def opt(default: Any, lo: float | None = None, hi: float | None = None, choices: tuple | None = None):
    """A config field with a checked range (lo <= v <= hi) or a set of choices."""
    return field(default=default, metadata={"lo": lo, "hi": hi, "choices": choices})


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
        return isinstance(value, (tuple, list))
    return isinstance(value, tp if isinstance(tp, type) else object)


def _coerce(tp, value):
    """JSON gives lists for tuples and ints for floats; bring them back to the declared type."""
    if isinstance(value, list) and typing.get_origin(tp) in (tuple, None) and "tuple" in str(tp):
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@dataclass
class ModelConfig:
    """Base of every model config. Subclasses set `family` and may extend `validate`."""

    family: ClassVar[str] = ""

    def validate(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not _accepts(hints[f.name], v):
                raise ConfigError(f"{type(self).__name__}.{f.name} must be {hints[f.name]}, got {v!r} ({type(v).__name__})")
            lo, hi, choices = (f.metadata.get(k) for k in ("lo", "hi", "choices"))
            if choices is not None and v not in choices:
                raise ConfigError(f"{type(self).__name__}.{f.name}={v!r} not in {choices}")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if (lo is not None and v < lo) or (hi is not None and v > hi):
                    raise ConfigError(f"{type(self).__name__}.{f.name}={v} out of range [{lo}, {hi}]")

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
