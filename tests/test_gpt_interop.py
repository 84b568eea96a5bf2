"""HF GPT-2 <-> mmfm GPT: logits agree to 1e-4 both ways (tiny random GPT2Config, nothing downloaded)."""
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import mmfm
from mmfm.interop import from_hf_gpt2, to_hf_gpt2


def _hf(act="gelu_new", tie=True, **flags):
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=97, n_positions=32, n_embd=48, n_layer=2, n_head=4, activation_function=act,
                     tie_word_embeddings=tie, bos_token_id=None, eos_token_id=None, **flags)
    hf = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # make biases and norms non-trivial
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return hf


@pytest.mark.parametrize("act,tie", [("gelu_new", True), ("gelu", False)])
def test_from_hf_logits_match(act, tie):
    hf = _hf(act, tie)
    gpt = from_hf_gpt2(hf).eval()
    assert gpt.config.mlp == ("gelu_tanh" if act == "gelu_new" else "gelu") and gpt.config.tie_weights == tie
    idx = torch.randint(0, 97, (3, 32))
    with torch.no_grad():
        assert (gpt(idx) - hf(idx).logits).abs().max() < 1e-4


FLAGS = [dict(scale_attn_weights=False), dict(scale_attn_by_inverse_layer_idx=True),
         dict(scale_attn_weights=False, scale_attn_by_inverse_layer_idx=True), dict(reorder_and_upcast_attn=True)]


@pytest.mark.parametrize("flags", FLAGS, ids=["no-scale", "inverse-layer", "both", "upcast"])
def test_from_hf_attention_scaling_flags_convert_exactly(flags, tmp_path):
    hf = _hf(**flags)
    with torch.no_grad():  # larger query weights, so that an ignored scale moves the logits far
        for block in hf.transformer.h:
            block.attn.c_attn.weight[:, :48] *= 4
    idx = torch.randint(0, 97, (3, 32))
    hf.save_pretrained(tmp_path, safe_serialization=True)
    with torch.no_grad():
        ref = hf(idx).logits
        for gpt in (from_hf_gpt2(hf).eval(), from_hf_gpt2(tmp_path).eval()):  # a model and a folder
            assert (gpt(idx) - ref).abs().max() < 1e-4
        if "reorder_and_upcast_attn" not in flags:  # the old conversion (scales ignored) was far off
            plain = _hf()
            plain.load_state_dict(hf.state_dict())
            assert (plain(idx).logits - ref).abs().max() > 1e-2


def test_from_local_folder(tmp_path):
    hf = _hf()
    hf.save_pretrained(tmp_path, safe_serialization=True)
    gpt = from_hf_gpt2(tmp_path).eval()
    idx = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        assert (gpt(idx) - hf(idx).logits).abs().max() < 1e-4


def test_to_hf_logits_match_and_roundtrip():
    gpt = mmfm.build_model("gpt-test", mlp="gelu_tanh").eval()
    with torch.no_grad():
        for p in gpt.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf = to_hf_gpt2(gpt)
    idx = torch.randint(0, 256, (2, 64))
    with torch.no_grad():
        assert (gpt(idx) - hf(idx).logits).abs().max() < 1e-4
        back = from_hf_gpt2(hf).eval()
        assert torch.equal(back(idx), gpt(idx))


def test_to_hf_rejects_non_gpt2_architecture():
    with pytest.raises(ValueError, match="pos"):
        to_hf_gpt2(mmfm.build_model("gpt-test", pos="rope"))
