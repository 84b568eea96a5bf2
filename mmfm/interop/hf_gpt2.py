"""HF transformers GPT-2 <-> mmfm GPT weight conversion, both ways (logits agree to ~1e-5).

    gpt = from_hf_gpt2(hf_model)            # a GPT2LMHeadModel, or
    gpt = from_hf_gpt2("path/to/gpt2")      # a local folder: config.json + model.safetensors (no download)
    gpt = from_hf_gpt2(hf_model, tokenizer="gpt2/tokenizer.json")  # keeps GPT-2's tokenizer (a folder's own
                                            # tokenizer.json is picked up); saved with the model, used by generate
    hf = to_hf_gpt2(gpt)                    # a transformers GPT2LMHeadModel

GPT-2's Conv1D layers store weights as (in, out): they are transposed to nn.Linear's (out, in).
GPT-2 uses tanh-GELU ("gelu_new") -> mlp="gelu_tanh", learned positions, LayerNorm with eps 1e-5.
GPT-2 attention scores scaled otherwise than by 1/sqrt(head_dim) (scale_attn_weights=False,
scale_attn_by_inverse_layer_idx=True) convert exactly: the ratio is folded into the query weights and bias.
reorder_and_upcast_attn only changes the precision of that product (mmfm's fp32 weights need nothing).
Cross-attention (add_cross_attention) and activations without an mmfm equivalent are refused.
"""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch

from ..models.gpt import GPT, GPTConfig

log = logging.getLogger(__name__)

_ACT = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
_ACT_BACK = {"gelu_tanh": "gelu_new", "gelu": "gelu"}
# per-block names: mmfm suffix -> (HF suffix, transposed Conv1D)
_BLOCK = {
    "norm1.weight": ("ln_1.weight", False), "norm1.bias": ("ln_1.bias", False),
    "attn.qkv.weight": ("attn.c_attn.weight", True), "attn.qkv.bias": ("attn.c_attn.bias", False),
    "attn.proj.weight": ("attn.c_proj.weight", True), "attn.proj.bias": ("attn.c_proj.bias", False),
    "norm2.weight": ("ln_2.weight", False), "norm2.bias": ("ln_2.bias", False),
    "mlp.fc1.weight": ("mlp.c_fc.weight", True), "mlp.fc1.bias": ("mlp.c_fc.bias", False),
    "mlp.fc2.weight": ("mlp.c_proj.weight", True), "mlp.fc2.bias": ("mlp.c_proj.bias", False),
}
_TOP = {"wte.weight": "wte.weight", "wpe.weight": "wpe.weight", "transformer.norm.weight": "ln_f.weight",
        "transformer.norm.bias": "ln_f.bias"}


def config_from_hf(hf: dict) -> GPTConfig:
    """A GPTConfig from a GPT-2 config (as a dict: `hf_config.to_dict()` or a config.json)."""
    act = hf.get("activation_function", "gelu_new")
    if act not in _ACT:
        raise ValueError(f"GPT-2 activation {act!r} has no mmfm equivalent; known: {sorted(_ACT)}")
    if hf.get("add_cross_attention"):
        raise ValueError("GPT-2 configs with add_cross_attention=True (an encoder-decoder) are not supported")
    n_embd = hf["n_embd"]
    return GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
                     n_head=hf["n_head"], n_embd=n_embd, mlp_ratio=float((hf.get("n_inner") or 4 * n_embd) / n_embd),
                     mlp=_ACT[act], norm="layernorm", norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
                     pos="learned", bias=True, tie_weights=bool(hf.get("tie_word_embeddings", True)))


def query_scales(hf: dict) -> list[float]:
    """Per layer, GPT-2's attention-score scale over mmfm's 1/sqrt(head_dim): 1.0 for a default GPT-2."""
    head_dim = hf["n_embd"] // hf["n_head"]
    base = 1.0 if hf.get("scale_attn_weights", True) else math.sqrt(head_dim)
    inverse = bool(hf.get("scale_attn_by_inverse_layer_idx", False))
    return [base / (i + 1 if inverse else 1) for i in range(hf["n_layer"])]


def hf_to_mmfm_state(sd: dict[str, torch.Tensor], n_layer: int, tied: bool,
                     q_scales: list[float] | None = None) -> dict[str, torch.Tensor]:
    """A GPT-2 state dict (with or without the `transformer.` prefix) -> mmfm GPT's state dict; `q_scales`
    (per layer, see `query_scales`) multiply the query rows of each qkv weight and bias."""
    sd = {k.removeprefix("transformer."): v for k, v in sd.items()}
    out = {ours: sd[theirs] for ours, theirs in _TOP.items()}
    for i in range(n_layer):
        for ours, (theirs, transposed) in _BLOCK.items():
            w = sd[f"h.{i}.{theirs}"]
            out[f"transformer.blocks.{i}.{ours}"] = w.t().contiguous() if transposed else w
        if q_scales is not None and q_scales[i] != 1.0:
            for name in ("weight", "bias"):  # qkv rows are [q; k; v]: (3C, C) and (3C,)
                qkv = out[f"transformer.blocks.{i}.attn.qkv.{name}"].clone()
                qkv[: qkv.shape[0] // 3] *= q_scales[i]
                out[f"transformer.blocks.{i}.attn.qkv.{name}"] = qkv
    out["lm_head.weight"] = out["wte.weight"] if tied else sd["lm_head.weight"]
    return out


def _load_folder(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    weights = path / "model.safetensors"
    if not (path / "config.json").is_file() or not weights.is_file():
        raise FileNotFoundError(f"{path} must hold config.json and model.safetensors (a GPT-2 folder)")
    return json.loads((path / "config.json").read_text()), load_file(str(weights))


def from_hf_gpt2(model_or_folder, tokenizer=None) -> GPT:
    """An mmfm GPT with the weights of a GPT2LMHeadModel (or GPT2Model) or of a local GPT-2 folder, and with
    `tokenizer` (a tokenizer.json path or an mmfm tokenizer; default: the folder's tokenizer.json, if any)."""
    if isinstance(model_or_folder, (str, os.PathLike)):
        hf_cfg, sd = _load_folder(Path(model_or_folder))
        if tokenizer is None and (Path(model_or_folder) / "tokenizer.json").is_file():
            tokenizer = Path(model_or_folder) / "tokenizer.json"
    else:
        hf_cfg, sd = model_or_folder.config.to_dict(), model_or_folder.state_dict()
    cfg = config_from_hf(hf_cfg)
    gpt = GPT(cfg)
    scales = query_scales(hf_cfg)
    if any(q != 1.0 for q in scales):
        log.info("GPT-2 attention scaling (scale_attn_weights=%s, scale_attn_by_inverse_layer_idx=%s) folded into "
                 "the query weights", hf_cfg.get("scale_attn_weights", True),
                 hf_cfg.get("scale_attn_by_inverse_layer_idx", False))
    state = hf_to_mmfm_state(sd, cfg.n_layer, cfg.tie_weights or "lm_head.weight" not in sd, scales)
    gpt.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    if tokenizer is not None:
        from ..tokenizers.hf import attach_tokenizer

        attach_tokenizer(gpt, tokenizer)
    return gpt


def to_hf_gpt2(gpt: GPT):
    """A transformers GPT2LMHeadModel with this GPT's weights (needs GPT-2's architecture choices)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = gpt.config
    unsupported = {"pos": (c.pos, "learned"), "norm": (c.norm, "layernorm"), "bias": (c.bias, True)}
    for name, (have, need) in unsupported.items():
        if have != need:
            raise ValueError(f"GPT-2 needs {name}={need!r}, this GPT has {name}={have!r}")
    if c.mlp not in _ACT_BACK:
        raise ValueError(f"GPT-2 has no {c.mlp!r} MLP; use 'gelu_tanh' or 'gelu'")
    hf_cfg = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                        n_head=c.n_head, n_inner=int(c.n_embd * c.mlp_ratio), activation_function=_ACT_BACK[c.mlp],
                        layer_norm_epsilon=c.norm_eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        tie_word_embeddings=c.tie_weights, bos_token_id=None, eos_token_id=None)
    hf = GPT2LMHeadModel(hf_cfg)
    ours = gpt.state_dict()
    sd = {f"transformer.{theirs}": ours[k] for k, theirs in _TOP.items()}
    for i in range(c.n_layer):
        for k, (theirs, transposed) in _BLOCK.items():
            w = ours[f"transformer.blocks.{i}.{k}"]
            sd[f"transformer.h.{i}.{theirs}"] = w.t().contiguous() if transposed else w.clone()
    sd["lm_head.weight"] = ours["lm_head.weight"]
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    if unexpected or [m for m in missing if not m.endswith(("attn.bias", "attn.masked_bias"))]:
        raise RuntimeError(f"GPT-2 weights did not match: missing {missing}, unexpected {unexpected}")
    return hf.eval()
