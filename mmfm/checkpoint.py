"""Saved model folders: config.json + model.safetensors (+ tokenizer/). Weights are never unpickled."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch.nn as nn
from safetensors.torch import load_model, save_model

from .registry import model_class, read_config

WEIGHTS = "model.safetensors"


def atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_pretrained(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write config.json, model.safetensors and the model's tokenizer (if any), each atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    atomic_write_text(path / "config.json", json.dumps({"family": cfg.family, "config": cfg.to_dict()}, indent=2))
    fd, tmp = tempfile.mkstemp(dir=path, prefix=WEIGHTS, suffix=".tmp")
    os.close(fd)
    save_model(model, tmp)  # handles tied weights
    os.replace(tmp, path / WEIGHTS)
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        tok.save(path / "tokenizer")
    return path


def load_pretrained(path: str | os.PathLike, **overrides) -> nn.Module:
    """Rebuild a model from a folder written by save_pretrained; weights load bit-exactly."""
    path = Path(path)
    cfg = read_config(path)
    if overrides:
        cfg = cfg.replace(**overrides)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: a model folder holds config.json and {WEIGHTS}")
    model = model_class(cfg.family)(cfg)
    load_model(model, str(weights), strict=True)
    if (path / "tokenizer").is_dir():
        from .tokenizers import load_tokenizer

        model.tokenizer = load_tokenizer(path / "tokenizer")
    return model
