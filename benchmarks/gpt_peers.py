"""The GPT peers of benchmarks/gpt.py, each built at mmfm's dims and holding mmfm's weights.

    transformers  GPT2LMHeadModel via mmfm.interop.to_hf_gpt2; its GELU set to the kernel mmfm runs
                  (exact: "gelu"; tanh: "gelu_pytorch_tanh", the one-kernel form, not the 7-op "gelu_new")
    nanogpt       nanoGPT's own model.py, read from a folder given on the command line (not vendored)
    litgpt        litgpt.model.GPT (RoPE on the whole head, GptNeoxMLP, sequential residual, untied head),
                  against mmfm's GPT with the same choices (pos="rope", tie_weights=False)

Every builder copies the weights in, so that the caller can check that all peers compute the same loss.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from mmfm.interop import to_hf_gpt2

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def transformers_gpt2(gpt, gelu: str):
    """GPT2LMHeadModel with `gpt`'s weights, SDPA attention, and the GELU kernel `gelu` ('exact' or 'tanh')."""
    from transformers.activations import ACT2FN

    hf = to_hf_gpt2(gpt)
    act = {"exact": "gelu", "tanh": "gelu_pytorch_tanh"}[gelu]
    hf.config.activation_function = act
    for block in hf.transformer.h:
        block.mlp.act = ACT2FN[act]
    hf.set_attn_implementation("sdpa")
    return hf


def load_nanogpt_module(folder: str):
    """nanoGPT's model.py from `folder` as a module (ValueError naming --nanogpt when it is missing)."""
    path = Path(folder) / "model.py"
    if not path.is_file():
        raise ValueError(f"--nanogpt {folder!r}: no model.py there (get it with "
                         "`git show HEAD:model.py` from a clone of github.com/karpathy/nanoGPT)")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nanogpt(module, hf, gelu: str):
    """nanoGPT's GPT at the dims of a GPT2LMHeadModel `hf`, with its weights (Conv1D weights transposed,
    as nanoGPT's own from_pretrained does)."""
    c = hf.config
    cfg = module.GPTConfig(block_size=c.n_positions, vocab_size=c.vocab_size, n_layer=c.n_layer, n_head=c.n_head,
                           n_embd=c.n_embd, dropout=0.0, bias=True)
    model = module.GPT(cfg)
    if gelu == "tanh":
        for block in model.transformer.h:
            block.mlp.gelu = torch.nn.GELU(approximate="tanh")
    theirs = hf.state_dict()
    sd = {k: (theirs[k].t() if k.endswith(_CONV1D) else theirs[k]) for k in model.state_dict() if k in theirs}
    missing = [k for k in model.state_dict() if k not in sd and not k.endswith(".attn.bias")]
    if missing:
        raise ValueError(f"nanoGPT's model.py has parameters GPT-2 does not: {missing[:4]}")
    model.load_state_dict(sd, strict=False)
    return model


def litgpt_twin(gpt):
    """litgpt's GPT with the dims and weights of an mmfm GPT that has pos='rope', tie_weights=False, bias=True,
    layernorm and an exact or tanh GELU MLP."""
    from litgpt.config import Config
    from litgpt.model import GPT

    c = gpt.config
    approx = {"gelu": "none", "gelu_tanh": "tanh"}[c.mlp]
    cfg = Config(block_size=c.block_size, vocab_size=c.vocab_size, padded_vocab_size=c.vocab_size, n_layer=c.n_layer,
                 n_head=c.n_head, n_embd=c.n_embd, rotary_percentage=1.0, rope_base=int(c.rope_base),
                 parallel_residual=False, bias=True, attn_bias=True, norm_class_name="LayerNorm",
                 norm_eps=c.norm_eps, mlp_class_name="GptNeoxMLP", gelu_approximate=approx,
                 intermediate_size=int(c.n_embd * c.mlp_ratio))
    model = GPT(cfg)
    ours = gpt.state_dict()
    names = {"wte.weight": "transformer.wte.weight", "lm_head.weight": "lm_head.weight",
             "transformer.norm.weight": "transformer.ln_f.weight", "transformer.norm.bias": "transformer.ln_f.bias"}
    block = {"norm1": "norm_1", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj", "norm2": "norm_2",
             "mlp.fc1": "mlp.fc", "mlp.fc2": "mlp.proj"}
    for i in range(c.n_layer):
        for ours_name, their_name in block.items():
            for kind in ("weight", "bias"):
                names[f"transformer.blocks.{i}.{ours_name}.{kind}"] = f"transformer.h.{i}.{their_name}.{kind}"
    model.load_state_dict({names[k]: v for k, v in ours.items()}, strict=True)
    return model
