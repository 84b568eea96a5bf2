"""Model families, named presets, and the one builder: build_model(name_or_folder, **overrides)."""
from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path

from .config import ConfigError, ModelConfig, closest

_FAMILIES: dict[str, type] = {}
_PRESETS: dict[str, ModelConfig] = {}
_LAZY = {"timm": "mmfm.models.timm_net"}  # families whose module (and library) is imported when first asked for
TIMM = "timm:"  # build_model("timm:resnet18"): any timm network as an image backbone (mmfm/models/timm_net.py)


def _lazy(family: str):
    import importlib

    return importlib.import_module(_LAZY[family])


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
    if name.startswith(TIMM):
        return _lazy("timm").timm_config(name, **overrides)
    if name not in _PRESETS:
        raise ConfigError(f"unknown model {name!r}{closest(name, _PRESETS)}")
    return _PRESETS[name].replace(**overrides)


def model_class(family: str):
    if family not in _FAMILIES and family in _LAZY:
        _lazy(family)
    if family not in _FAMILIES:
        raise ConfigError(f"unknown model family {family!r}; known: {sorted(_FAMILIES)}")
    return _FAMILIES[family]


def available_memory() -> int:
    """Bytes of memory this process could still allocate (psutil when installed, else /proc/meminfo, else sysconf)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(cfg: ModelConfig, overrides: dict | None = None, bytes_per_param: int = 4) -> None:
    """Refuse, before allocating, a config whose float32 parameters alone exceed the available memory (the
    message names the `overrides` that were given, as the likely cause)."""
    n = cfg.estimate_params()
    if n is None:
        return
    need, avail = n * bytes_per_param, available_memory()
    if need > avail:
        raise ConfigError(f"this {cfg.family} config has about {n:,} parameters: {need / 2**30:,.1f} GiB in float32, "
                          f"more than the {avail / 2**30:,.1f} GiB of memory available; reduce its size "
                          f"(layers, width, vocabulary, image size)"
                          + (f"; overrides given: {', '.join(f'{k}={v!r}' for k, v in overrides.items())}"
                             if overrides else ""))


def build_model(name_or_path: str | os.PathLike, **overrides):
    """Build a preset by name (`build_model("gpt-test", n_layer=4)`) or load a saved folder.

    A string that names a preset builds the preset; a folder of the same name without config.json does not
    change that. A preset name that is also a saved folder in the working directory is refused as ambiguous:
    pass "./NAME" (or a Path) for the folder. A config whose parameters cannot fit in memory is refused
    before anything is allocated."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"build_model takes a preset name or a folder path, got {type(name_or_path).__name__}")
    path, name = Path(name_or_path), str(name_or_path)
    is_preset, is_folder = name in _PRESETS, (path / "config.json").is_file()
    if is_preset and is_folder and isinstance(name_or_path, str):
        raise ConfigError(f"{name_or_path!r} is both a preset and a saved model folder ({path.resolve()}); pass "
                          f"'.{os.sep}{name_or_path}' (or a Path) to load the folder, or move the folder away "
                          f"to build the preset")
    if is_folder:
        from .checkpoint import load_pretrained

        return load_pretrained(path, **overrides)
    if name.startswith(TIMM):
        return _lazy("timm").build_timm(name, **overrides)
    if not is_preset and (path.exists() or os.sep in name):
        old = sorted(path.parent.glob(f".{path.name}.old-*"))  # left by a save interrupted mid-swap
        raise ConfigError(f"{name!r} is not a preset and has no config.json (not a saved model folder)"
                          + (f"; an interrupted save left the previous folder at {old[-1]}" if old else ""))
    cfg = get_config(name, **overrides)
    check_fits(cfg, overrides)
    return model_class(cfg.family)(cfg)


def config_from_json(d: dict) -> ModelConfig:
    if not isinstance(d, dict) or "family" not in d or not isinstance(d.get("config"), dict):
        raise ConfigError("config.json must be an object with 'family' and 'config' (an object) keys")
    return model_class(d["family"]).config_class.from_dict(d["config"])


def read_config(path: Path) -> ModelConfig:
    """The config of a saved folder; a file that is not JSON, or not a valid config, fails naming the file."""
    file = Path(path) / "config.json"
    try:
        d = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{file}: not UTF-8 text (byte {e.start}); a model folder's config.json is JSON") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{file}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    try:
        return config_from_json(d)
    except ConfigError as e:
        raise ConfigError(f"{file}: {e}") from None
