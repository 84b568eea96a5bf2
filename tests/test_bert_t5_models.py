"""BERT and T5 on the shared stack: presets, padding, post-norm, relative position bias, T5's KV-cache
decoding equal to the full forward, greedy generation. (Forward/backward/save/load of bert-test and
t5-test run in tests/test_models.py, which covers every *-test preset.)"""
import pytest
import torch

import mmfm
from mmfm.models.bert import with_classifier
from mmfm.models.t5 import relative_bucket
from mmfm.nn import Attention


def _jitter(model, scale=0.05):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))
    return model.eval()


def test_presets_registered_with_paper_sizes():
    assert {"bert-test", "t5-test"} <= set(mmfm.list_models("*-test"))
    with torch.device("meta"):
        bert, t5 = mmfm.build_model("bert-base"), mmfm.build_model("t5-small")
    assert bert.num_params() == 109_514_298  # transformers' BertForMaskedLM at bert-base-uncased's config
    assert t5.num_params() == 76_961_152  # google/t5-v1_1-small
    for m in (bert, t5):
        assert abs(m.config.estimate_params() - m.num_params()) / m.num_params() < 1e-3


def test_bert_padding_is_never_attended_and_pre_norm_builds():
    for post in (True, False):
        bert = _jitter(mmfm.build_model("bert-test", post_norm=post))
        ids = torch.randint(0, 256, (2, 10))
        mask = torch.ones(2, 10, dtype=torch.long)
        mask[:, 7:] = 0
        other = ids.clone()
        other[:, 7:] = 5
        with torch.no_grad():
            a, b = bert(ids, mask), bert(other, mask)
        assert a.shape == (2, 10, 256)
        assert torch.allclose(a[:, :7], b[:, :7], atol=1e-6) and not torch.allclose(a[:, 7:], b[:, 7:])


def test_bert_classifier_keeps_the_encoder_and_embeddings_mean_pool():
    bert = _jitter(mmfm.build_model("bert-test"))
    clf = with_classifier(bert, 6).eval()
    ids = torch.randint(0, 256, (3, 9))
    with torch.no_grad():
        assert torch.equal(clf.encode(ids), bert.encode(ids))
        assert clf.classify(ids).shape == (3, 6)
        mask = torch.ones(3, 9, dtype=torch.long)
        mask[0, 4:] = 0
        assert torch.allclose(bert.embed(ids, mask)[0], bert.encode(ids[:1, :4]).mean(1)[0], atol=1e-5)
    with pytest.raises(ValueError, match="num_labels > 0"):
        bert.classify(ids)


def test_attention_bias_is_added_to_the_scores():
    torch.manual_seed(0)
    attn = Attention(16, 2, causal=True).eval()
    x, bias = torch.randn(2, 5, 16), torch.randn(1, 2, 5, 5)
    q, k, v = (t.view(2, 5, 2, 8).transpose(1, 2) for t in attn.qkv(x).chunk(3, -1))
    s = q @ k.transpose(-1, -2) / 8 ** 0.5 + bias
    s = s.masked_fill(~torch.ones(5, 5, dtype=torch.bool).tril(), float("-inf"))
    want = attn.proj((s.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 16))
    assert torch.allclose(attn(x, attn_bias=bias), want, atol=1e-5)


def test_relative_buckets_match_t5():
    rel = torch.arange(-200, 201)
    bi = relative_bucket(rel, True, 32, 128)
    assert bi[200] == 0 and bi[201] == 17 and bi.max() == 31 and bi.min() == 0
    uni = relative_bucket(rel, False, 32, 128)
    assert (uni[201:] == 0).all() and uni[199] == 1 and uni[0] == 31


def test_t5_kv_cache_decoding_equals_full_forward():
    t5 = _jitter(mmfm.build_model("t5-test"))
    ids = torch.randint(2, 256, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 6:] = 0
    dec = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        full = t5(ids, dec, mask)
        memory = t5.encode(ids, mask)
        caches = t5.decoder.new_caches(2, 9)
        steps = [t5.decode(dec[:, :4], memory, mask, caches)]  # a prefill, then one token at a time
        steps += [t5.decode(dec[:, i:i + 1], memory, mask, caches) for i in range(4, 9)]
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_t5_greedy_generation_is_the_argmax_of_the_full_forward():
    t5 = _jitter(mmfm.build_model("t5-test"), 0.3)
    ids = torch.randint(2, 256, (3, 8))
    with torch.no_grad():
        out = t5.generate(ids, 6)
        dec = torch.zeros(3, 1, dtype=torch.long)
        for _ in range(6):  # no cache: re-run the whole decoder each step
            dec = torch.cat([dec, t5(ids, dec)[:, -1].argmax(-1, keepdim=True)], 1)
    assert len(set(out.flatten().tolist())) > 1
    assert torch.equal(out, dec[:, 1:])


def test_t5_shift_right_and_bad_arguments():
    t5 = mmfm.build_model("t5-test")
    assert t5.shift_right(torch.tensor([[5, 6, -100, 1]])).tolist() == [[0, 5, 6, 0]]
    with pytest.raises(ValueError, match="max_new_tokens"):
        t5.generate(torch.ones(1, 3, dtype=torch.long), 0)
