"""The shared stack against the textbook formulas."""
import math

import pytest
import torch

import mmfm
from mmfm.nn import (Attention, Block, KVCache, StackConfig, Transformer, apply_rotary, patchify, sincos_2d,
                     unpatchify, RotaryEmbedding)


def naive_attention(attn: Attention, x, allowed):
    """softmax(q k^T / sqrt(d) + mask) v with an explicit (B, 1, T, T) boolean `allowed`."""
    B, T, C = x.shape
    H, D = attn.n_heads, attn.head_dim
    q, k, v = attn.qkv(x).split(C, dim=-1)
    q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D)
    scores = scores.masked_fill(~allowed, float("-inf"))
    y = scores.softmax(-1) @ v  # (B, H, T, D)
    return attn.proj(y.transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_attention_matches_naive(causal, padded):
    B, T, C = 3, 7, 16
    attn = Attention(C, 4, causal=causal).eval()
    x = torch.randn(B, T, C)
    allowed = torch.ones(B, 1, T, T, dtype=torch.bool)
    kpm = None
    if causal:
        allowed &= torch.tril(torch.ones(T, T, dtype=torch.bool))
    if padded:
        kpm = torch.ones(B, T, dtype=torch.bool)
        kpm[0, 5:] = False
        kpm[2, 3:] = False
        allowed &= kpm[:, None, None, :]
    got = attn(x, key_padding_mask=kpm)
    want = naive_attention(attn, x, allowed)
    valid = kpm if kpm is not None else torch.ones(B, T, dtype=torch.bool)
    if causal and padded:  # rows that see no key are undefined; compare real queries only
        pass
    assert torch.allclose(got[valid], want[valid], atol=1e-5)


def test_cross_attention_shapes_and_mask():
    attn = Attention(16, 2, kv_dim=8).eval()
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    y = attn(x, key_padding_mask=mask, context=ctx)
    y2 = attn(x[:1], context=ctx[:1, :2])
    assert y.shape == (2, 5, 16) and torch.allclose(y[:1], y2, atol=1e-6)


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_kv_cache_decoding_equals_full_forward(pos):
    model = mmfm.build_model("gpt-test", pos=pos).eval()
    idx = torch.randint(0, 256, (2, 12))
    full = model(idx)
    caches = model.transformer.new_caches(2, 12)
    step_logits = [model(idx[:, :5], caches=caches)]  # prefill 5, then one token at a time
    for t in range(5, 12):
        step_logits.append(model(idx[:, t:t + 1], caches=caches))
    inc = torch.cat(step_logits, dim=1)
    assert torch.allclose(full, inc, atol=1e-5)


def test_kv_cache_chunked_prefill_with_padding():
    """Two prompts of different lengths, left-padded, decoded with a cache: equal to unpadded forwards."""
    model = mmfm.build_model("gpt-test", pos="rope").eval()
    a, b = torch.randint(0, 256, (1, 6)), torch.randint(0, 256, (1, 3))
    pad = 3
    idx = torch.cat([a, torch.cat([torch.zeros(1, pad, dtype=torch.long), b], 1)], 0)  # (2, 6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, :pad] = False
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)  # (2, 6)
    caches = model.transformer.new_caches(2, 8)
    logits = model(idx, key_padding_mask=mask, positions=positions, caches=caches)
    assert torch.allclose(logits[0], model(a)[0], atol=1e-5)
    assert torch.allclose(logits[1, pad:], model(b)[0], atol=1e-5)
    nxt = torch.randint(0, 256, (2, 1))
    mask2 = torch.cat([mask, torch.ones(2, 1, dtype=torch.bool)], 1)
    step = model(nxt, key_padding_mask=mask2, positions=positions[:, -1:] + 1, caches=caches)
    assert torch.allclose(step[1, 0], model(torch.cat([b, nxt[1:]], 1))[0, -1], atol=1e-5)


def test_kv_cache_overflow_is_clear():
    cache = KVCache.empty(1, 2, 4, 8)
    with pytest.raises(ValueError, match="overflow"):
        cache.append(torch.zeros(1, 2, 5, 8), torch.zeros(1, 2, 5, 8))


def test_rotary_relative():
    """RoPE scores depend only on the offset between positions."""
    rope = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i, j):
        qi = apply_rotary(q, *rope(torch.tensor([i])))
        kj = apply_rotary(k, *rope(torch.tensor([j])))
        return (qi * kj).sum()

    assert torch.allclose(score(3, 1), score(10, 8), atol=1e-5)


def test_adaln_zero_block_starts_as_identity():
    blk = Block(StackConfig(16, 1, 2, cond_dim=8))
    x, c = torch.randn(2, 5, 16), torch.randn(2, 8)
    assert torch.equal(blk(x, c), x)


def test_stack_serves_swiglu_rmsnorm_layerscale():
    t = Transformer(StackConfig(16, 2, 2, mlp="swiglu", norm="rmsnorm", ls_init=1e-5, drop_path=0.1))
    assert t(torch.randn(2, 4, 16)).shape == (2, 4, 16)


def test_patchify_roundtrip_and_sincos():
    x = torch.randn(2, 3, 8, 12)
    p = patchify(x, 4)
    assert p.shape == (2, 6, 48)
    assert torch.equal(unpatchify(p, 4, 3, 2, 3), x)
    pe = sincos_2d(16, 4)
    assert pe.shape == (16, 16) and pe.abs().max() <= 1


def test_vit_other_sizes_and_channels():
    vit = mmfm.build_model("vit-test", in_chans=3).eval()
    assert vit(torch.randn(2, 3, 48, 40)).shape == (2, 10)
    assert vit(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="channel"):
        vit(torch.randn(2, 2, 32, 32))
    with pytest.raises(ValueError, match="divisible"):
        vit(torch.randn(2, 3, 30, 32))


def test_dit_wrong_input_is_clear():
    dit = mmfm.build_model("dit-test")
    with pytest.raises(ValueError, match="DiT expects"):
        dit(torch.randn(2, 3, 16, 16), torch.zeros(2))


def test_gelu_tanh_inference_path_equals_aten_and_training_path_is_aten():
    import torch.nn.functional as F

    from mmfm.nn.mlp import GELU

    x = torch.randn(64, 96) * 4
    act = GELU(approximate="tanh")
    with torch.no_grad():
        assert torch.allclose(act(x), F.gelu(x, approximate="tanh"), atol=1e-6)
    xg = x.clone().requires_grad_()
    y = act(xg)
    assert torch.equal(y, F.gelu(xg, approximate="tanh"))  # autograd inputs take F.gelu itself
    (g,) = torch.autograd.grad(y.sum(), xg)
    assert torch.isfinite(g).all()
    assert torch.equal(GELU()(x), F.gelu(x))  # exact GELU is untouched
