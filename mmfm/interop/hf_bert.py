"""HF transformers BERT <-> mmfm BERT weight conversion, both ways (logits agree to ~1e-6).

    bert = from_hf_bert(hf_model)              # a BertForMaskedLM, BertForSequenceClassification or BertModel
    bert = from_hf_bert("path/to/bert")        # a local folder: config.json + model.safetensors (no download)
    hf = to_hf_bert(bert)                      # a transformers BertForMaskedLM
    hf = to_hf_bert(bert, head="classify")     # a BertForSequenceClassification (needs num_labels > 0)

BERT's separate query/key/value Linears are stacked into mmfm's one qkv Linear; its post-norm layers map
to a post_norm stack. Parts the source lacks (a BertForSequenceClassification has no MLM head, a
BertForMaskedLM no pooler) keep mmfm's initialisation, and the log says so.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from ..models.bert import BERT, BERTConfig

log = logging.getLogger(__name__)

_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
_TOP = {"wte.weight": "embeddings.word_embeddings.weight", "wpe.weight": "embeddings.position_embeddings.weight",
        "wtt.weight": "embeddings.token_type_embeddings.weight", "emb_norm.weight": "embeddings.LayerNorm.weight",
        "emb_norm.bias": "embeddings.LayerNorm.bias"}
_MLM = {"mlm.dense.weight": "cls.predictions.transform.dense.weight",
        "mlm.dense.bias": "cls.predictions.transform.dense.bias",
        "mlm.norm.weight": "cls.predictions.transform.LayerNorm.weight",
        "mlm.norm.bias": "cls.predictions.transform.LayerNorm.bias", "mlm.bias": "cls.predictions.bias"}
_CLS = {"pooler.weight": "pooler.dense.weight", "pooler.bias": "pooler.dense.bias",
        "classifier.weight": "classifier.weight", "classifier.bias": "classifier.bias"}
_BLOCK = {"attn.proj": "attention.output.dense", "norm1": "attention.output.LayerNorm",
          "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense", "norm2": "output.LayerNorm"}


def load_hf_folder(path: Path, what: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config dict, state dict) of a local transformers folder holding config.json and model.safetensors."""
    from safetensors.torch import load_file

    weights = path / "model.safetensors"
    if not (path / "config.json").is_file() or not weights.is_file():
        raise FileNotFoundError(f"{path} must hold config.json and model.safetensors (a {what} folder)")
    return json.loads((path / "config.json").read_text()), load_file(str(weights))


def config_from_hf(hf: dict, num_labels: int, mask_id: int | None = None) -> BERTConfig:
    act = hf.get("hidden_act", "gelu")
    if act not in _ACT:
        raise ValueError(f"BERT activation {act!r} has no mmfm equivalent; known: {sorted(_ACT)}")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"position_embedding_type={hf['position_embedding_type']!r}: only 'absolute' converts")
    if hf.get("is_decoder") or hf.get("add_cross_attention"):
        raise ValueError("BERT decoders (is_decoder / add_cross_attention) are not supported")
    vocab = hf["vocab_size"]
    if mask_id is None:  # bert-base-uncased's [MASK]; tiny vocabularies get their last id
        mask_id = 103 if vocab > 103 else vocab - 1
        log.info("BERT config names no [MASK] id: using %d (pass mask_id= to choose)", mask_id)
    return BERTConfig(vocab_size=vocab, max_len=hf["max_position_embeddings"], type_vocab_size=hf["type_vocab_size"],
                      n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"], n_embd=hf["hidden_size"],
                      d_ff=hf["intermediate_size"], mlp=_ACT[act], norm_eps=float(hf.get("layer_norm_eps", 1e-12)),
                      post_norm=True, dropout=float(hf.get("hidden_dropout_prob", 0.1)), num_labels=num_labels,
                      pad_id=hf.get("pad_token_id") or 0, mask_id=mask_id)


def hf_to_mmfm_state(sd: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """A BERT state dict (any head class, with or without `bert.`) -> the mmfm BERT entries it holds."""
    sd = {k.removeprefix("bert."): v for k, v in sd.items()}
    out = {ours: sd[theirs] for part in (_TOP, _MLM, _CLS) for ours, theirs in part.items() if theirs in sd}
    for i in range(n_layer):
        pre, ours = f"encoder.layer.{i}.", f"transformer.blocks.{i}."
        for kind in ("weight", "bias"):
            out[ours + f"attn.qkv.{kind}"] = torch.cat([sd[pre + f"attention.self.{n}.{kind}"]
                                                        for n in ("query", "key", "value")])
            for o, t in _BLOCK.items():
                out[ours + f"{o}.{kind}"] = sd[pre + f"{t}.{kind}"]
    return out


def from_hf_bert(model_or_folder, mask_id: int | None = None, tokenizer=None) -> BERT:
    """An mmfm BERT with the weights of a transformers BERT (model or local folder); a sequence classifier
    keeps its pooler and classifier (num_labels from its config)."""
    if isinstance(model_or_folder, (str, os.PathLike)):
        hf_cfg, sd = load_hf_folder(Path(model_or_folder), "BERT")
    else:
        hf_cfg, sd = model_or_folder.config.to_dict(), model_or_folder.state_dict()
    has_cls = "classifier.weight" in sd
    cfg = config_from_hf(hf_cfg, sd["classifier.weight"].shape[0] if has_cls else 0, mask_id)
    bert = BERT(cfg)
    ours = bert.state_dict()
    state = {k: v.to(torch.float32) for k, v in hf_to_mmfm_state(sd, cfg.n_layer).items() if k in ours}
    missing = sorted(set(ours) - set(state))
    if any(not k.startswith("mlm.") for k in missing):
        raise RuntimeError(f"BERT weights did not match: missing {missing}")
    bert.load_state_dict(state, strict=False)
    if missing:
        log.info("no MLM head in the source model: %s left at mmfm's initialisation", ", ".join(missing))
    if tokenizer is not None:
        from ..tokenizers.hf import attach_tokenizer

        attach_tokenizer(bert, tokenizer)
    return bert


def to_hf_bert(bert: BERT, head: str = "mlm"):
    """A transformers BertForMaskedLM (head="mlm") or BertForSequenceClassification (head="classify")."""
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    c = bert.config
    if head not in ("mlm", "classify"):
        raise ValueError(f"head={head!r}: choose 'mlm' or 'classify'")
    if not c.post_norm:
        raise ValueError("transformers' BERT is post-norm; this BERT has post_norm=False")
    if head == "classify" and not c.num_labels:
        raise ValueError("head='classify' needs a BERT with num_labels > 0")
    hf_cfg = BertConfig(vocab_size=c.vocab_size, hidden_size=c.n_embd, num_hidden_layers=c.n_layer,
                        num_attention_heads=c.n_head, intermediate_size=c.d_ff,
                        hidden_act={"gelu": "gelu", "gelu_tanh": "gelu_new"}[c.mlp], hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, max_position_embeddings=c.max_len,
                        type_vocab_size=c.type_vocab_size, layer_norm_eps=c.norm_eps, pad_token_id=c.pad_id,
                        num_labels=max(c.num_labels, 1))
    hf = BertForMaskedLM(hf_cfg) if head == "mlm" else BertForSequenceClassification(hf_cfg)
    missing, unexpected = hf.load_state_dict(mmfm_to_hf_state(bert, head), strict=False)
    if unexpected or any(not k.endswith("position_ids") for k in missing):
        raise RuntimeError(f"BERT weights did not match: missing {missing}, unexpected {unexpected}")
    return hf.eval()


def mmfm_to_hf_state(bert: BERT, head: str) -> dict[str, torch.Tensor]:
    ours, c, C = bert.state_dict(), bert.config, bert.config.n_embd
    parts = [_TOP] + ([_MLM] if head == "mlm" else [_CLS])
    sd = {}
    for part in parts:
        for k, theirs in part.items():
            top = theirs.startswith(("cls.", "classifier."))
            sd[theirs if top else f"bert.{theirs}"] = ours[k].clone()
    if head == "mlm":
        sd["cls.predictions.decoder.weight"] = ours["wte.weight"].clone()
        sd["cls.predictions.decoder.bias"] = ours["mlm.bias"].clone()
    for i in range(c.n_layer):
        pre, src = f"bert.encoder.layer.{i}.", f"transformer.blocks.{i}."
        for kind in ("weight", "bias"):
            for n, part in zip(("query", "key", "value"), ours[src + f"attn.qkv.{kind}"].split(C)):
                sd[pre + f"attention.self.{n}.{kind}"] = part.clone()
            for o, t in _BLOCK.items():
                sd[pre + f"{t}.{kind}"] = ours[src + f"{o}.{kind}"].clone()
    return sd
