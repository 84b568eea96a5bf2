"""`mmfm export`: a saved folder's forward passes as ONNX (for onnxruntime and other runtimes) or torch.export
programs, with dynamic batch (and sequence) axes.

    export("runs/clip/model", "onnx", "runs/clip/onnx")   # -> image.onnx, text.onnx (+ export.json)

GPT: gpt(idx int64 (B, T)) -> logits (B, T, V), 2 <= T <= block_size (the sequence axis is dynamic from 2).
ViT: image(images float32 (B, C, H, W), normalised as the model expects) -> the model's output (logits or features).
CLIP: image(images float32 (B, C, H, W) normalised) -> (B, E) and text(text int64 (B, T), [sot] ids [eot] + pad)
      -> (B, E), both L2-normalised as `encode_image` / `encode_text`; 2 <= T <= context_length.
"""
from __future__ import annotations

import json
import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)
FORMATS = ("onnx", "torch-export")
OPSET = 18
ATOL = 1e-4


class _GPTForward(nn.Module):
    """GPT logits with an all-True key mask: the masked attention path, which traces with a symbolic length."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, idx):
        return self.model(idx, key_padding_mask=torch.ones_like(idx, dtype=torch.bool))


@contextmanager
def _traceable_causal_flag():
    """While exporting, SDPA's `is_causal` (`causal and T > 1`, symbolic under torch.export) is made a plain bool:
    true for every sequence length >= 2 the exported text tower takes."""
    sdpa = F.scaled_dot_product_attention

    def patched(*args, is_causal=False, **kw):
        return sdpa(*args, is_causal=bool(is_causal), **kw)
    F.scaled_dot_product_attention = patched
    try:
        yield
    finally:
        F.scaled_dot_product_attention = sdpa


class _CLIPText(nn.Module):
    """CLIP's `encode_text` without its Python-side id range check (a data-dependent branch export cannot trace)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, text):
        tower = self.model.text
        x = tower.forward_tokens(text)  # (B, T, W)
        is_eot = text == tower.eot_id
        last = torch.full_like(text[:, 0], text.shape[1] - 1)
        idx = torch.where(is_eot.any(1), is_eot.int().argmax(1), last)  # the first end-of-text, as TextTower
        return F.normalize(x[torch.arange(x.shape[0], device=x.device), idx] @ self.model.text_proj, dim=-1)


class _Call(nn.Module):
    """One method of a model as a module's forward, for exporters (which trace `forward`)."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x):
        return getattr(self.model, self.method)(x)


def graphs(model) -> list[tuple[str, nn.Module, torch.Tensor, str, dict[int, str]]]:
    """(name, module, example input, input name, dynamic axes) for each exported forward of `model`."""
    c, family = model.config, model.config.family
    if family == "gpt":
        idx = torch.randint(0, c.vocab_size, (2, min(8, c.block_size)))
        return [("gpt", _GPTForward(model), idx, "idx", {0: "batch", 1: "seq"})]
    if family == "vit":
        images = torch.randn(2, c.in_chans, c.img_size, c.img_size)
        return [("image", _Call(model, "forward"), images, "images", {0: "batch"})]
    if family == "clip":
        images = torch.randn(2, c.in_chans, c.img_size, c.img_size)
        text = torch.randint(0, c.vocab_size, (2, min(8, c.context_length)))
        text[:, -1] = c.eot_id
        return [("image", _Call(model, "encode_image"), images, "images", {0: "batch"}),
                ("text", _CLIPText(model), text, "text", {0: "batch", 1: "seq"})]
    raise ValueError(f"mmfm export covers gpt, vit and clip folders; this is a {family} model")


def _other_shape(x: torch.Tensor, axes: dict[int, str], limit: int) -> torch.Tensor:
    """An input of another batch (3) and sequence length than the example, to check the axes are dynamic."""
    shape = list(x.shape)
    shape[0] = 3
    if 1 in axes:
        shape[1] = min(limit, shape[1] + 5)
    if x.dtype == torch.long:
        out = torch.randint(0, int(x.max()) + 1, shape)
        out[:, -1] = x[0, -1]
        return out
    return torch.randn(shape)


def _seq_limit(model) -> int:
    c = model.config
    return getattr(c, "block_size", None) or getattr(c, "context_length", None) or 1


def _dims(axes: dict[int, str], seq_limit: int) -> tuple[dict]:
    """torch.export's dynamic shapes for the one input: batch, and sequence up to the model's context."""
    dims = {0: torch.export.Dim("batch", min=1, max=4096)}
    if 1 in axes:
        dims[1] = torch.export.Dim("seq", min=2, max=seq_limit)
    return (dims,)


def export_onnx(name: str, module: nn.Module, x: torch.Tensor, input_name: str, axes: dict, out: Path,
                seq_limit: int) -> Path:
    """Through torch.export (the dynamo exporter): one self-contained .onnx file."""
    path = out / f"{name}.onnx"
    with warnings.catch_warnings(), _traceable_causal_flag():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (x,), input_names=[input_name], output_names=["output"],
                                    dynamic_shapes=_dims(axes, seq_limit), opset_version=OPSET, dynamo=True,
                                    external_data=False, verbose=False)
    program.save(str(path), external_data=False)
    return path


def check_onnx(path: Path, module: nn.Module, x: torch.Tensor, input_name: str) -> float:
    """Max |onnxruntime - PyTorch| on `x`; an AssertionError past ATOL."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {input_name: x.numpy()})[0]
    with torch.no_grad():
        want = module(x).numpy()
    err = float(abs(got - want).max())
    if not err <= ATOL:
        raise AssertionError(f"{path.name}: onnxruntime differs from PyTorch by {err:.2e} (> {ATOL}) on input "
                             f"{tuple(x.shape)}")
    return err


def export_program(name: str, module: nn.Module, x: torch.Tensor, input_name: str, axes: dict, out: Path,
                   seq_limit: int) -> Path:
    with _traceable_causal_flag():
        program = torch.export.export(module, (x,), dynamic_shapes=_dims(axes, seq_limit))
    path = out / f"{name}.pt2"
    torch.export.save(program, str(path))
    return path


def export(folder, fmt: str = "onnx", out=None, check: bool = True) -> list[Path]:
    """Export a saved folder's forwards into `out`; returns the written files (and export.json describing them)."""
    import mmfm

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if out is None:
        raise ValueError("out: the folder to write the exported files into is required")
    model = mmfm.build_model(Path(folder)).eval()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written, manifest = [], {"source": str(folder), "family": model.config.family, "format": fmt, "graphs": {}}
    for name, module, x, input_name, axes in graphs(model):
        if fmt == "onnx":
            path = export_onnx(name, module, x, input_name, axes, out, _seq_limit(model))
            if check:
                err = max(check_onnx(path, module, x, input_name),
                          check_onnx(path, module, _other_shape(x, axes, _seq_limit(model)), input_name))
                log.info("%s: onnxruntime matches PyTorch to %.1e (batch 2 and 3)", path, err)
        else:
            path = export_program(name, module, x, input_name, axes, out, _seq_limit(model))
        manifest["graphs"][name] = {"file": path.name, "input": input_name, "dtype": str(x.dtype).replace("torch.", ""),
                                    "dynamic_axes": {str(k): v for k, v in axes.items()}, "example_shape": list(x.shape)}
        written.append(path)
    (out / "export.json").write_text(json.dumps(manifest, indent=2))
    return written
