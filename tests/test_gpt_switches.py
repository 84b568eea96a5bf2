"""Issue 20: the cached, fused RoPE path equals the plain rotate-half one; the modded-nanogpt switches
(qk_norm, mlp='relu2', zero_init_proj, tie_weights=False) build, train, decode with a KV cache and round-trip
through save_pretrained."""
from __future__ import annotations

import pytest
import torch

import mmfm
from mmfm.nn import Attention, RotaryEmbedding, apply_rotary
from mmfm.nn.pos import rotate_heads

SWITCHES = {"qk_norm": dict(qk_norm=True), "relu2": dict(mlp="relu2"), "zero_init_proj": dict(zero_init_proj=True),
            "untied": dict(tie_weights=False), "all": dict(qk_norm=True, mlp="relu2", zero_init_proj=True,
                                                           tie_weights=False)}


def _reference_qkv(attn: Attention, x, cos, sin):
    """The pre-issue-20 path: chunk into q, k, v, split the heads, rotate q and k one by one."""
    q, k, v = (attn._split(t) for t in attn.qkv(x).chunk(3, dim=-1))  # each (B, H, T, Dh)
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v


@pytest.mark.parametrize("start", [0, 5, 300])
def test_cached_rope_tables_equal_direct(start):
    rope = RotaryEmbedding(16)
    cos, sin = rope.span(start, 7)
    ref_cos, ref_sin = rope(torch.arange(start, start + 7))
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    assert rope.span(start, 7)[0].data_ptr() == cos.data_ptr()  # served from the cache, not recomputed
    half = rope.span(start, 7, dtype=torch.bfloat16)[0]
    assert half.dtype == torch.bfloat16 and torch.equal(half, ref_cos.bfloat16())


@pytest.mark.parametrize("batched", [False, True])
def test_fused_rotary_equals_rotate_half(batched):
    torch.manual_seed(0)
    attn, rope = Attention(32, 4, causal=True), RotaryEmbedding(8)
    x = torch.randn(3, 11, 32)
    positions = torch.randint(0, 50, (3, 11)) if batched else torch.arange(4, 15)
    cos, sin = rope(positions)
    for got, ref in zip(attn._qkv(x, (cos, sin)), _reference_qkv(attn, x, cos, sin)):
        assert got.shape == ref.shape and torch.allclose(got, ref, atol=1e-6, rtol=0)
    x1 = torch.randn(2, 5, 8)
    c, s = rope(torch.arange(5))
    assert torch.allclose(rotate_heads(x1, c, s), apply_rotary(x1, c, s), atol=1e-6, rtol=0)


def test_rope_gradients_match_reference():
    torch.manual_seed(0)
    attn, rope = Attention(32, 4, causal=True), RotaryEmbedding(8)
    x = torch.randn(2, 9, 32, requires_grad=True)
    cos, sin = rope(torch.arange(9))
    g1 = torch.autograd.grad(sum(t.square().sum() for t in attn._qkv(x, (cos, sin))), x)[0]
    g2 = torch.autograd.grad(sum(t.square().sum() for t in _reference_qkv(attn, x, cos, sin)), x)[0]
    assert torch.allclose(g1, g2, atol=1e-5)


def _model(**switches):
    torch.manual_seed(0)
    return mmfm.build_model("gpt-test", pos="rope", norm="rmsnorm", **switches)


def test_rope_model_cached_path_equals_explicit_positions():
    model = _model()
    idx = torch.randint(0, 256, (2, 20))
    assert torch.allclose(model(idx), model(idx, positions=torch.arange(20)), atol=1e-6)


@pytest.mark.parametrize("name", list(SWITCHES))
def test_switch_trains_decodes_and_round_trips(name, tmp_path):
    model = _model(**SWITCHES[name])
    if name in ("zero_init_proj", "all"):
        assert all(not b.attn.proj.weight.any() and not b.mlp.fc2.weight.any() for b in model.transformer.blocks)
    if name in ("untied", "all"):
        assert model.lm_head.weight is not model.wte.weight
    idx = torch.randint(0, 256, (2, 12))
    loss = torch.nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.roll(-1, 1).flatten())
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())
    if name == "qk_norm":  # (with zero_init_proj the attention's parameters get no gradient at step 0)
        assert model.transformer.blocks[0].attn.q_norm.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():  # prefill 8 tokens, then decode 4 one at a time: the full forward's logits
        full = model(idx)
        caches = model.transformer.new_caches(2, 12)
        model(idx[:, :8], caches=caches)
        step = model.decoder(caches)
        assert step is not None  # the fast one-token decoder covers the switch
        for t in range(8, 12):
            assert torch.allclose(step(idx[:, t], t), full[:, t], atol=1e-5)
        gen = model.generate(idx[:1, :4].tolist(), 6, temperature=0)
        ref = model.generate(idx[:1, :4].tolist(), 6, temperature=0, use_cache=False)
        assert torch.equal(torch.as_tensor(gen), torch.as_tensor(ref))
    model.save_pretrained(tmp_path / "m")
    loaded = mmfm.build_model(str(tmp_path / "m"))
    assert getattr(loaded.config, next(iter(SWITCHES[name]))) == getattr(model.config, next(iter(SWITCHES[name])))
    with torch.no_grad():
        assert torch.equal(loaded(idx), full)


def test_switches_default_off_keep_state_dict():
    base = mmfm.build_model("gpt-test")
    assert not base.config.qk_norm and not base.config.zero_init_proj and base.config.mlp == "gelu"
    assert not any("q_norm" in k or "k_norm" in k for k in base.state_dict())
    assert {"blocks.0.attn.q_norm.weight", "blocks.0.attn.k_norm.weight"} <= {
        k.removeprefix("transformer.") for k in _model(qk_norm=True).state_dict()}


def test_bad_mlp_kind_names_the_choices():
    with pytest.raises(Exception, match="relu2"):
        mmfm.build_model("gpt-test", mlp="relu3")


def test_rope_table_made_under_inference_mode_serves_training():
    model = _model()
    idx = torch.randint(0, 256, (1, 10))
    with torch.inference_mode():
        model(idx)  # generate's first call builds the cached tables
    model(idx).sum().backward()  # would fail if the cached tables were inference tensors
    assert model.wte.weight.grad is not None
