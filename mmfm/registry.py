"""Model families, named presets, and the one builder: build_model(name_or_folder, **overrides)."""
from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path

from .config import ConfigError, ModelConfig, closest

_FAMILIES: dict[str, type] = {}
_PRESETS: dict[str, ModelConfig] = {}


def register_family(cls):
    """Class decorator: a model class whose `config_class.family` names it in saved folders."""
    _FAMILIES[cls.config_class.family] = cls
    return cls


def register_preset(name: str, config: ModelConfig) -> None:
    if name in _PRESETS:
        raise ConfigError(f"preset {name!r} registered twice")
    config.validate()
    _PRESETS[name] = config


def list_models(pattern: str | None = None) -> list[str]:
    names = sorted(_PRESETS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def get_config(name: str, **overrides) -> ModelConfig:
    if name not in _PRESETS:
        raise ConfigError(f"unknown model {name!r}{closest(name, _PRESETS)}")
    return _PRESETS[name].replace(**overrides)


def model_class(family: str):
    if family not in _FAMILIES:
        raise ConfigError(f"unknown model family {family!r}; known: {sorted(_FAMILIES)}")
    return _FAMILIES[family]


def build_model(name_or_path: str | os.PathLike, **overrides):
    """Build a preset by name (`build_model("gpt-test", n_layer=4)`) or load a saved folder."""
    path = Path(name_or_path)
    if (path / "config.json").is_file():
        from .checkpoint import load_pretrained

        return load_pretrained(path, **overrides)
    if path.exists() or os.sep in str(name_or_path):
        raise ConfigError(f"{str(name_or_path)!r} is not a preset and has no config.json (not a saved model folder)")
    cfg = get_config(str(name_or_path), **overrides)
    return model_class(cfg.family)(cfg)


def config_from_json(d: dict) -> ModelConfig:
    if not isinstance(d, dict) or "family" not in d or "config" not in d:
        raise ConfigError("config.json must be an object with 'family' and 'config' keys")
    return model_class(d["family"]).config_class.from_dict(d["config"])


def read_config(path: Path) -> ModelConfig:
    with open(path / "config.json") as f:
        return config_from_json(json.load(f))
