"""HF transformers T5 (v1.1, gated-GELU) <-> mmfm T5 weight conversion, both ways (logits agree to ~1e-6).

    t5 = from_hf_t5(hf_model)          # a T5ForConditionalGeneration, or
    t5 = from_hf_t5("path/to/t5")      # a local folder: config.json + model.safetensors (no download)
    hf = to_hf_t5(t5)                  # a transformers T5ForConditionalGeneration

T5 scores attention without 1/sqrt(d_kv); mmfm's stack divides by it, so the query weights are multiplied
by sqrt(d_kv) on the way in and divided on the way out. q/k/v stack into one qkv Linear (cross-attention:
q, and k/v into one kv Linear); wi_0 (gated, GELU) and wi_1 into one fc1. The relative position tables
live in the first layer of each HF stack; mmfm keeps one per stack. T5 v1.0's ReLU feed-forward
(feed_forward_proj="relu") has no mmfm equivalent and is refused.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import torch

from ..models.t5 import T5, T5Config
from .hf_bert import load_hf_folder

log = logging.getLogger(__name__)

_REL = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"


def config_from_hf(hf: dict, tie: bool) -> T5Config:
    """A T5Config from a transformers T5 config dict; `tie`: the LM head is the shared embedding."""
    ff = hf.get("feed_forward_proj", "relu")
    if ff not in ("gated-gelu", "gated-gelu_new"):
        raise ValueError(f"T5 feed_forward_proj={ff!r} has no mmfm equivalent; only 'gated-gelu' (T5 v1.1) converts")
    pad = hf.get("pad_token_id", 0) or 0
    start = hf.get("decoder_start_token_id")
    if start is not None and start != pad:
        raise ValueError(f"decoder_start_token_id={start} differs from pad_token_id={pad}; mmfm starts at pad")
    return T5Config(vocab_size=hf["vocab_size"], n_embd=hf["d_model"], n_head=hf["num_heads"], head_dim=hf["d_kv"],
                    d_ff=hf["d_ff"], n_layer=hf["num_layers"],
                    n_decoder_layer=hf.get("num_decoder_layers") or hf["num_layers"],
                    rel_buckets=hf.get("relative_attention_num_buckets", 32),
                    rel_max_distance=hf.get("relative_attention_max_distance", 128),
                    norm_eps=float(hf.get("layer_norm_epsilon", 1e-6)), dropout=float(hf.get("dropout_rate", 0.1)),
                    tie_weights=tie, scale_output=bool(hf.get("scale_decoder_outputs", tie)), pad_id=pad,
                    eos_id=hf.get("eos_token_id", 1) if hf.get("eos_token_id") is not None else 1)


def _attn(sd: dict, src: str, scale: float, cross: bool) -> dict[str, torch.Tensor]:
    q, k, v, o = (sd[f"{src}.{n}.weight"] for n in "qkvo")
    if cross:
        return {"q.weight": q * scale, "kv.weight": torch.cat([k, v]), "proj.weight": o}
    return {"qkv.weight": torch.cat([q * scale, k, v]), "proj.weight": o}


def hf_to_mmfm_state(sd: dict[str, torch.Tensor], cfg: T5Config) -> dict[str, torch.Tensor]:
    s = math.sqrt(cfg.head_dim)
    out = {"shared.weight": sd["shared.weight"], "encoder.norm.weight": sd["encoder.final_layer_norm.weight"],
           "decoder.norm.weight": sd["decoder.final_layer_norm.weight"],
           "enc_bias.table.weight": sd[f"encoder.{_REL}"], "dec_bias.table.weight": sd[f"decoder.{_REL}"],
           "lm_head.weight": sd["shared.weight"] if cfg.tie_weights else sd["lm_head.weight"]}
    for stack, n in (("encoder", cfg.n_layer), ("decoder", cfg.n_decoder_layer)):
        for i in range(n):
            hf, ours, ff = f"{stack}.block.{i}.layer", f"{stack}.blocks.{i}", 2 if stack == "decoder" else 1
            parts = {"norm1.weight": sd[f"{hf}.0.layer_norm.weight"], "norm2.weight": sd[f"{hf}.{ff}.layer_norm.weight"],
                     "mlp.fc1.weight": torch.cat([sd[f"{hf}.{ff}.DenseReluDense.wi_0.weight"],
                                                  sd[f"{hf}.{ff}.DenseReluDense.wi_1.weight"]]),
                     "mlp.fc2.weight": sd[f"{hf}.{ff}.DenseReluDense.wo.weight"]}
            parts.update({f"attn.{k}": v for k, v in _attn(sd, f"{hf}.0.SelfAttention", s, False).items()})
            if stack == "decoder":
                parts["norm_x.weight"] = sd[f"{hf}.1.layer_norm.weight"]
                parts.update({f"cross.{k}": v for k, v in _attn(sd, f"{hf}.1.EncDecAttention", s, True).items()})
            out.update({f"{ours}.{k}": v for k, v in parts.items()})
    return out


def from_hf_t5(model_or_folder, tokenizer=None) -> T5:
    """An mmfm T5 with the weights of a T5ForConditionalGeneration or of a local T5 folder."""
    if isinstance(model_or_folder, (str, os.PathLike)):
        hf_cfg, sd = load_hf_folder(Path(model_or_folder), "T5")
    else:
        hf_cfg, sd = model_or_folder.config.to_dict(), model_or_folder.state_dict()
    tie = "lm_head.weight" not in sd or bool(torch.equal(sd["lm_head.weight"], sd["shared.weight"]))
    cfg = config_from_hf(hf_cfg, tie)
    t5 = T5(cfg)
    t5.load_state_dict({k: v.to(torch.float32) for k, v in hf_to_mmfm_state(sd, cfg).items()}, strict=True)
    if tokenizer is not None:
        from ..tokenizers.hf import attach_tokenizer

        attach_tokenizer(t5, tokenizer)
    return t5


def _hf_attn(ours: dict, src: str, dst: str, inner: int, scale: float, cross: bool) -> dict[str, torch.Tensor]:
    if cross:
        q, (k, v) = ours[f"{src}.q.weight"], ours[f"{src}.kv.weight"].split(inner)
    else:
        q, k, v = ours[f"{src}.qkv.weight"].split(inner)
    return {f"{dst}.q.weight": q / scale, f"{dst}.k.weight": k.clone(), f"{dst}.v.weight": v.clone(),
            f"{dst}.o.weight": ours[f"{src}.proj.weight"].clone()}


def mmfm_to_hf_state(t5: T5) -> dict[str, torch.Tensor]:
    ours, c = t5.state_dict(), t5.config
    inner, s = c.n_head * c.head_dim, math.sqrt(c.head_dim)
    sd = {"shared.weight": ours["shared.weight"].clone(), "lm_head.weight": ours["lm_head.weight"].clone(),
          "encoder.final_layer_norm.weight": ours["encoder.norm.weight"].clone(),
          "decoder.final_layer_norm.weight": ours["decoder.norm.weight"].clone(),
          f"encoder.{_REL}": ours["enc_bias.table.weight"].clone(), f"decoder.{_REL}": ours["dec_bias.table.weight"].clone()}
    sd["encoder.embed_tokens.weight"] = sd["decoder.embed_tokens.weight"] = sd["shared.weight"]
    for stack, n in (("encoder", c.n_layer), ("decoder", c.n_decoder_layer)):
        for i in range(n):
            hf, src, ff = f"{stack}.block.{i}.layer", f"{stack}.blocks.{i}", 2 if stack == "decoder" else 1
            wi_0, wi_1 = ours[f"{src}.mlp.fc1.weight"].split(c.d_ff)
            sd.update({f"{hf}.0.layer_norm.weight": ours[f"{src}.norm1.weight"].clone(),
                       f"{hf}.{ff}.layer_norm.weight": ours[f"{src}.norm2.weight"].clone(),
                       f"{hf}.{ff}.DenseReluDense.wi_0.weight": wi_0.clone(),
                       f"{hf}.{ff}.DenseReluDense.wi_1.weight": wi_1.clone(),
                       f"{hf}.{ff}.DenseReluDense.wo.weight": ours[f"{src}.mlp.fc2.weight"].clone()})
            sd.update(_hf_attn(ours, f"{src}.attn", f"{hf}.0.SelfAttention", inner, s, False))
            if stack == "decoder":
                sd[f"{hf}.1.layer_norm.weight"] = ours[f"{src}.norm_x.weight"].clone()
                sd.update(_hf_attn(ours, f"{src}.cross", f"{hf}.1.EncDecAttention", inner, s, True))
    return sd


def to_hf_t5(t5: T5):
    """A transformers T5ForConditionalGeneration (v1.1 architecture) with this T5's weights."""
    from transformers import T5Config as HFT5Config
    from transformers import T5ForConditionalGeneration

    c = t5.config
    hf_cfg = HFT5Config(vocab_size=c.vocab_size, d_model=c.n_embd, d_kv=c.head_dim, d_ff=c.d_ff, num_layers=c.n_layer,
                        num_decoder_layers=c.n_decoder_layer, num_heads=c.n_head,
                        relative_attention_num_buckets=c.rel_buckets,
                        relative_attention_max_distance=c.rel_max_distance, dropout_rate=0.0,
                        layer_norm_epsilon=c.norm_eps, feed_forward_proj="gated-gelu",
                        tie_word_embeddings=c.scale_output, pad_token_id=c.pad_id, eos_token_id=c.eos_id,
                        decoder_start_token_id=c.pad_id)
    hf_cfg.scale_decoder_outputs = c.scale_output  # transformers 5 reads the scaling from tie_word_embeddings
    hf = T5ForConditionalGeneration(hf_cfg)
    sd = mmfm_to_hf_state(t5)
    if not c.tie_weights and hf.lm_head.weight is hf.shared.weight:  # transformers 5 always ties: untie
        hf.lm_head.weight = torch.nn.Parameter(sd["lm_head.weight"])
        hf.config.tie_word_embeddings = False
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"T5 weights did not match: missing {missing}, unexpected {unexpected}")
    return hf.eval()
