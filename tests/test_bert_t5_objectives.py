"""MLM masking statistics (15%; 80/10/10) and T5 span corruption (sentinels, mean span 3) round trip."""
import pytest
import torch

from mmfm.losses.mlm import mlm_mask, span_corrupt, span_restore


def test_mlm_mask_statistics():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (64, 512), generator=g)
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, 0] = True  # e.g. [CLS]: never chosen
    inputs, labels = mlm_mask(ids, mask_id=3, vocab_size=1000, keep=keep, generator=g)
    chosen = labels != -100
    n = chosen.sum().item()
    assert abs(n / (~keep).sum().item() - 0.15) < 0.005 and not chosen[:, 0].any()
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])
    masked = (inputs == 3) & chosen
    same = (inputs == ids) & chosen
    rand = chosen & ~masked & ~same
    assert abs(masked.sum().item() / n - 0.8) < 0.015
    assert abs(same.sum().item() / n - 0.1) < 0.01  # (+ 0.1% random draws equal to the original)
    assert abs(rand.sum().item() / n - 0.1) < 0.01
    with pytest.raises(ValueError, match="p must be"):
        mlm_mask(ids, 3, 1000, p=0.0)


def test_span_corruption_round_trip_and_statistics():
    g = torch.Generator().manual_seed(0)
    S, eos = 999, 1
    lengths, noise, total = [], 0, 0
    for n in [2, 3, 7, 50, 200, 512] * 20:
        tokens = torch.randint(2, 900, (n,), generator=g).tolist()
        inp, tgt = span_corrupt(tokens, sentinel_start=S, eos_id=eos, generator=g)
        assert span_restore(inp, tgt, S, eos) == tokens
        sentinels = [t for t in tgt if t > 900]
        assert sentinels == list(range(S, S - len(sentinels), -1)) == [t for t in inp if t > 900]
        assert tgt[-1] == eos
        if n >= 200:
            noise += len(tgt) - 1 - len(sentinels)
            total += n
            lengths.append((len(tgt) - 1 - len(sentinels)) / len(sentinels))
    assert abs(noise / total - 0.15) < 0.01
    assert abs(sum(lengths) / len(lengths) - 3.0) < 0.2
    with pytest.raises(ValueError, match="at least 2 tokens"):
        span_corrupt([5], S, eos)
