"""The one-token decode path of `generate` (StackDecoder with pre-transposed weights, in-place residuals, narrow
cache views) gives the module forward's greedy tokens for every stack it covers, and its intra-op thread choice
changes no token and leaves torch's setting as it found it."""
import pytest
import torch

import mmfm
from mmfm.models import generation
from mmfm.models.generation import SMALL_STEP, decode_threads, intra_op_threads

PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10], [11]]
STACKS = [
    dict(pos="learned"),  # GPT-2: LayerNorm, exact GELU, biases, one kv copy per step
    dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False),  # Llama-like: mm without bias, rotary
    dict(pos="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, bias=False),  # gpt-shakespeare-char's switches
    dict(pos="learned", mlp="gelu_tanh", tie_weights=False),
]


def module_path_generate(model, prompts, n, **kw):
    """generate through the module forward with a KV cache (the reference): no one-token decoder."""
    decoder = model.decoder
    model.decoder = lambda caches: None
    try:
        return model.generate(prompts, n, **kw)
    finally:
        model.decoder = decoder


@pytest.mark.parametrize("overrides", STACKS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["batch1", "ragged3"])
def test_decoder_tokens_equal_module_forward(overrides, prompts):
    torch.manual_seed(0)
    model = mmfm.build_model("gpt-test", **overrides).eval()
    fast = model.generate(prompts, 20, temperature=0, return_logprobs=True)
    ref = module_path_generate(model, prompts, 20, temperature=0, return_logprobs=True)
    assert fast.tolist() == ref.tolist()
    assert torch.allclose(fast.logprobs, ref.logprobs, atol=1e-5)


def test_decoder_sees_in_place_weight_updates():
    """The pre-transposed weights are views: an in-place update after building the decoder is used."""
    model = mmfm.build_model("gpt-test").eval()
    caches = model.transformer.new_caches(1, 8)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]), caches=caches)
        step = model.decoder(caches)
        model.transformer.blocks[-1].mlp.fc2.weight.mul_(2.0)  # no cached key or value depends on it
        model.lm_head.weight.add_(0.5)
        fast = step(torch.tensor([4]), 3)
        ref = model(torch.tensor([[1, 2, 3, 4]]))[:, -1]
    assert torch.allclose(fast, ref, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_change_no_token_and_are_restored(threads):
    model = mmfm.build_model("gpt-test").eval()
    before = torch.get_num_threads()
    seen = []
    decoder = model.decoder

    def spying(caches):
        step = decoder(caches)
        return lambda *a: (seen.append(torch.get_num_threads()), step(*a))[1]
    model.decoder = spying
    out = model.generate(PROMPTS, 12, temperature=0, threads=threads)
    assert torch.get_num_threads() == before
    assert set(seen) == {threads}  # every one-token step ran on the requested count
    del model.decoder
    assert out.tolist() == model.generate(PROMPTS, 12, temperature=0, threads=before).tolist()


def test_decode_threads_one_for_small_steps_torch_setting_above():
    model = mmfm.build_model("gpt-test")
    matrices = sum(p.numel() for p in model.transformer.parameters() if p.dim() == 2)
    assert decode_threads(model, 1) == 1
    assert decode_threads(model, SMALL_STEP // matrices + 1) == torch.get_num_threads()


@pytest.fixture
def module_step_threads(monkeypatch):
    """The thread count at every step that goes through the module forward (`_step_logits`), in order."""
    seen = []
    real = generation._step_logits

    def spying(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)
    monkeypatch.setattr(generation, "_step_logits", spying)
    return seen


def test_cacheless_generation_keeps_torch_threads(module_step_threads):
    """Without a KV cache every step is a full-window forward: the automatic choice leaves torch's setting."""
    seen = module_step_threads
    with intra_op_threads(2):  # torch's setting above the automatic choice's one thread
        mmfm.build_model("gpt-test").eval().generate(PROMPTS, 4, temperature=0, use_cache=False)
    assert seen == [2] * 4


def test_intra_op_threads_restores_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"):
        with intra_op_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with intra_op_threads(None):
        assert torch.get_num_threads() == before


@pytest.mark.parametrize("threads,exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_threads_refused(threads, exc):
    model = mmfm.build_model("gpt-test").eval()
    with pytest.raises(exc, match="threads"):
        model.generate(PROMPTS, 2, temperature=0, threads=threads)


def test_prefill_keeps_torch_threads(module_step_threads):
    """Only the steps after the prefill switch: step 1 (the whole prompt) runs at torch's setting."""
    seen = module_step_threads
    before = torch.get_num_threads()
    mmfm.build_model("gpt-test").eval().generate(PROMPTS, 6, temperature=0, threads=1)
    assert seen == [before]  # the prefill; the one-token steps went through the decoder
