"""GPT generation: cache == no cache, batched == one at a time, sampling filters, stops, log-probs."""
import importlib.util
import logging
import re
from pathlib import Path

import pytest
import torch

import mmfm
from mmfm.models.generation import filter_logits, generate, left_pad, sample_next
from mmfm.tokenizers import CharTokenizer

PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [8, 9, 10], [11]]


@pytest.fixture(params=["learned", "rope"])
def model(request):
    return mmfm.build_model("gpt-test", pos=request.param).eval()


def test_greedy_cache_equals_no_cache(model):
    with_cache = model.generate(PROMPTS, 24, temperature=0)
    without = model.generate(PROMPTS, 24, temperature=0, use_cache=False)
    assert with_cache.tolist() == without.tolist()
    assert with_cache.tokens.shape == (3, 24) and with_cache.lengths.tolist() == [24, 24, 24]


def test_greedy_matches_argmax_of_full_forward(model):
    out = model.generate([PROMPTS[0]], 5, temperature=0).tolist()[0]
    seq = list(PROMPTS[0])
    for _ in range(5):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert out == seq[len(PROMPTS[0]):]


def test_batched_prompts_equal_one_at_a_time(model):
    batched = model.generate(PROMPTS, 16, temperature=0, return_logprobs=True)
    for i, p in enumerate(PROMPTS):
        alone = model.generate([p], 16, temperature=0, return_logprobs=True)
        assert batched[i] == alone[0]
        assert torch.allclose(batched.logprobs[i], alone.logprobs[0], atol=1e-5)


def test_past_block_size_falls_back_to_sliding_window():
    model = mmfm.build_model("gpt-test").eval()  # learned positions, block 64
    out = model.generate([[1, 2, 3]], 100, temperature=0)
    assert out.lengths.tolist() == [100]


def test_tensor_prompt_and_seeded_sampling(model):
    idx = torch.tensor([[1, 2, 3], [4, 5, 6]])
    a = model.generate(idx, 10, temperature=1.0, generator=torch.Generator().manual_seed(3))
    b = model.generate(idx, 10, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert a.tolist() == b.tolist()


def test_top_k_and_top_p_filters():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert torch.isfinite(filter_logits(logits, top_k=2)).sum() == 2
    probs = logits.softmax(-1)[0]  # ~[0.64, 0.24, 0.09, ...]
    kept = torch.isfinite(filter_logits(logits, top_p=0.7))[0]
    assert kept.tolist() == [True, True, False, False, False] and probs[0] < 0.7 <= probs[:2].sum()
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).sum() == 1
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, top_k=2, generator=g)) for _ in range(200)}
    assert draws == {0, 1}
    assert int(sample_next(logits, 0.0)) == 0


def test_temperature_sharpens():
    logits = torch.tensor([[2.0, 1.0, 0.0]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    cold = (sample_next(logits, 0.2, generator=g) == 0).float().mean()
    hot = (sample_next(logits, 5.0, generator=g) == 0).float().mean()
    assert cold > 0.95 and 0.2 < hot < 0.55


def test_stop_tokens_and_strings_stop_each_row():
    model = mmfm.build_model("gpt-test", vocab_size=16).eval()
    tok = CharTokenizer("abcdefghijklmn")  # 14 chars + pad + eos = 16 ids
    model.tokenizer = tok

    def gen(**kw):
        return model.generate(["ab", "c"], 30, temperature=1.0, generator=torch.Generator().manual_seed(0), **kw)

    free = gen().tolist()
    stop = free[0][5]
    j = free[0].index(stop)
    stopped = gen(stop_tokens=[stop])
    assert stopped.tolist()[0] == free[0][: j + 1]
    assert stopped.tokens[0, j + 1:].eq(tok.pad_id).all()
    assert stopped.tolist()[1] == free[1][: len(stopped.tolist()[1])]
    text = tok.decode(free[1])
    target = text[6:8]
    got = gen(stop_strings=[target]).texts()[1]
    assert got.endswith(target) and target not in got[:-1] and text.startswith(got)


def test_logprobs_are_the_raw_model_logprobs(model):
    out = model.generate([PROMPTS[1]], 4, temperature=0.7, top_k=5, return_logprobs=True,
                         generator=torch.Generator().manual_seed(1))
    seq = torch.tensor([PROMPTS[1] + out[0]])
    logp = torch.log_softmax(model(seq)[0, len(PROMPTS[1]) - 1:-1], -1)  # (4, V)
    expect = logp.gather(-1, torch.tensor(out[0])[:, None]).squeeze(-1)
    assert torch.allclose(out.logprobs[0], expect, atol=1e-5)


def test_left_pad_shapes():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.sum(1).tolist() == [3, 1]
    with pytest.raises(ValueError):
        left_pad([[1], []])


@pytest.mark.parametrize("overrides", [
    dict(pos="learned", norm="layernorm", mlp="gelu_tanh"),
    dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False),
])
def test_stack_decoder_step_equals_module_forward(overrides):
    """The functional one-token path gives the module forward's logits, unpadded and left-padded."""
    model = mmfm.build_model("gpt-test", **overrides).eval()
    ids, mask = left_pad(PROMPTS)  # (3, 7) each
    B, T0 = ids.shape
    with torch.no_grad():
        fast_caches = model.transformer.new_caches(B, T0 + 4)
        ref_caches = model.transformer.new_caches(B, T0 + 4)
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)  # (B, T0)
        for caches in (fast_caches, ref_caches):
            model(ids, key_padding_mask=mask, positions=positions, caches=caches)
        step = model.decoder(fast_caches)
        full_mask = torch.cat([mask, torch.ones(B, 4, dtype=torch.bool)], 1)  # (B, T0 + 4)
        nxt = torch.tensor([5, 6, 7])
        for slot in range(T0, T0 + 4):
            pos = positions[:, -1] + 1 + slot - T0  # (B,)
            fast = step(nxt, slot, pos, full_mask)
            ref = model(nxt[:, None], key_padding_mask=full_mask[:, :slot + 1], positions=pos[:, None],
                        caches=ref_caches)[:, -1]
            assert torch.allclose(fast, ref, atol=1e-5)
            nxt = fast.argmax(-1)
        unpadded = model.transformer.new_caches(1, 8)
        model(ids[:1], caches=unpadded)
        ref = model(torch.cat([ids[:1], nxt[:1, None]], 1))[:, -1]  # (1, V), no cache
        assert torch.allclose(model.decoder(unpadded)(nxt[:1], T0), ref, atol=1e-5)


def test_stack_decoder_only_covers_plain_causal_stacks():
    from mmfm.nn import StackDecoder

    gpt = mmfm.build_model("gpt-test")
    assert not StackDecoder.supports(gpt.transformer)  # training mode: dropout and friends
    assert StackDecoder.supports(gpt.eval().transformer)
    assert not StackDecoder.supports(mmfm.build_model("dit-test").eval().transformer)  # adaLN
    assert not StackDecoder.supports(mmfm.build_model("vit-test").eval().transformer)  # bidirectional
    with pytest.raises(ValueError, match="plain causal"):
        StackDecoder(gpt.train().transformer, gpt.transformer.new_caches(1, 4))


BAD_ARGS = [  # (keyword arguments, error type, the argument the message names)
    (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
    (dict(max_new_tokens=None), TypeError, "max_new_tokens"),
    (dict(max_new_tokens=2.0), TypeError, "max_new_tokens"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(temperature="0.8"), TypeError, "temperature"),
    (dict(top_k=2.5), TypeError, "top_k"),
    (dict(top_k=0), ValueError, "top_k"),
    (dict(top_k=-3), ValueError, "top_k"),
    (dict(top_p=0.0), ValueError, "top_p"),
    (dict(top_p=1.5), ValueError, "top_p"),
    (dict(top_p=float("nan")), ValueError, "top_p"),
    (dict(prompts=[[1, 2, 256]]), ValueError, "prompts[0]"),
    (dict(prompts=[[1], [-1]]), ValueError, "prompts[1]"),
    (dict(prompts=[[1.0, 2.0]]), TypeError, "prompts[0]"),
    (dict(prompts=torch.tensor([[0.5, 1.0]])), TypeError, "prompts[0]"),
    (dict(prompts=[[]]), ValueError, "prompts"),
    (dict(prompts=42), TypeError, "prompts"),
    (dict(pad_id=256), ValueError, "pad_id"),
    (dict(pad_id=-1), ValueError, "pad_id"),
    (dict(stop_tokens=[300]), ValueError, "stop_tokens"),
    (dict(stop_tokens=[1.0]), TypeError, "stop_tokens"),
    (dict(stop_strings="\n"), TypeError, "stop_strings"),
    (dict(generator=0), TypeError, "generator"),
]


@pytest.mark.parametrize("kwargs,exc,name", BAD_ARGS, ids=[f"{n}-{i}" for i, (_, _, n) in enumerate(BAD_ARGS)])
def test_bad_arguments_are_refused_naming_them(kwargs, exc, name):
    model = mmfm.build_model("gpt-test").eval()  # vocab 256
    call = {"prompts": [[1, 2, 3]], "max_new_tokens": 4, **kwargs}
    with pytest.raises(exc, match=re.escape(name)):
        generate(model, **call)


def test_negative_temperature_no_longer_samples_and_zero_is_greedy():
    model = mmfm.build_model("gpt-test").eval()
    with pytest.raises(ValueError, match="temperature"):
        model.generate([[1, 2]], 3, temperature=-1)
    assert model.generate([[1, 2]], 3, temperature=0).tolist() == model.generate([[1, 2]], 3, temperature=0.0).tolist()


def test_text_prompt_with_a_foreign_tokenizer_names_the_mismatch():
    model = mmfm.build_model("gpt-test", vocab_size=4).eval()
    tok = CharTokenizer.train("abcdefgh")
    with pytest.raises(ValueError, match="tokenizer does not match"):
        model.generate("hgf", 2, tokenizer=tok)


def test_rope_past_block_size_slides_the_window_and_warns(caplog):
    model = mmfm.build_model("gpt-test", pos="rope").eval()  # block 64
    with caplog.at_level(logging.WARNING, logger="mmfm.models.generation"):
        out = model.generate([[1, 2, 3]], 80, temperature=0, use_cache=False)
    assert out.lengths.tolist() == [80] and "sliding window" in caplog.text
    seq = [1, 2, 3] + out.tolist()[0]  # cacheless: the last token equals greedy on the last 64 tokens alone
    # (with the cache: a rolling KV cache, tests/test_generation_window.py)
    window = torch.tensor([seq[-65:-1]])
    assert int(model(window)[0, -1].argmax()) == seq[-1]


@pytest.mark.parametrize("flag,value", [("--temperature", "-1"), ("--top-p", "0"), ("--top-k", "0"),
                                        ("--max-new-tokens", "-5"), ("--temperature", "nan")])
def test_generate_recipe_refuses_bad_sampling_flags(flag, value, capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("generate_recipe", Path(__file__).parents[1] / "recipes/generate.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    with pytest.raises(SystemExit) as e:  # refused before the (missing) model folder is read
        recipe.main([str(tmp_path / "no-model"), flag, value])
    assert e.value.code == 2 and flag in capsys.readouterr().err
