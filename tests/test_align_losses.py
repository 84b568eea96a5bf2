"""Preference and RL losses against hand-computed values."""
import math

import pytest
import torch

from mmfm.losses.preference import (bradley_terry_loss, dpo_loss, gae, ipo_loss, masked_mean, ppo_policy_loss,
                                    ppo_value_loss, sequence_logprobs, token_logprobs)


def softplus(x):
    return math.log1p(math.exp(x))


def test_bradley_terry_by_hand():
    loss, acc = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0]))
    assert loss.item() == pytest.approx((softplus(-1.0) + softplus(2.0)) / 2, abs=1e-6)
    assert acc.item() == 0.5


def test_dpo_and_ipo_by_hand():
    pi_c, pi_r, ref_c, ref_r = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))  # h = 1 - (-1) = 2
    loss, acc = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.5)
    assert loss.item() == pytest.approx(softplus(-1.0), abs=1e-6) and acc.item() == 1.0
    loss, _ = ipo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.5)  # (2 - 1/(2*0.5))^2 = 1
    assert loss.item() == pytest.approx(1.0, abs=1e-6)
    loss0, _ = dpo_loss(ref_c, ref_r, ref_c, ref_r, beta=0.5)  # policy == reference: log 2
    assert loss0.item() == pytest.approx(math.log(2), abs=1e-6)


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 1.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0: d2 = 1 - .7 = .3; d1 = .7 - .6 = .1 -> .1 + .5*.3 = .25; d0 = .6 - .5 = .1 -> .1 + .5*.25 = .225
    # row 1 (last token padding): d1 = 2 + 0 - 1 = 1; d0 = 1 - 1 = 0 -> 0 + .5*1 = .5; padding 0
    assert torch.allclose(adv, torch.tensor([[0.225, 0.25, 0.3], [0.5, 1.0, 0.0]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[0.725, 0.85, 1.0], [1.5, 2.0, 0.0]]), atol=1e-6)


def test_gae_discounts():
    adv, _ = gae(torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2), torch.ones(1, 2), gamma=0.9, lam=1.0)
    assert torch.allclose(adv, torch.tensor([[0.9, 1.0]]))


def test_ppo_clipped_loss_by_hand():
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    adv = torch.tensor([[1.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 1, 0]])  # the third token is padding
    loss, stats = ppo_policy_loss(logp, old, adv, mask, clip=0.2)
    # token 0: min(1.5, 1.2) = 1.2; token 1: min(-0.5, -0.8) = -0.8 -> loss = -(1.2 - 0.8) / 2
    assert loss.item() == pytest.approx(-0.2, abs=1e-6)
    assert stats["clipfrac"].item() == 1.0


def test_ppo_value_loss_clips():
    v, old, ret = torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([[1.0]])
    # unclipped (2-1)^2 = 1, clipped to 0.2: (0.2-1)^2 = .64; max = 1 -> 0.5
    assert ppo_value_loss(v, old, ret, torch.ones(1, 1), clip=0.2).item() == pytest.approx(0.5)


def test_logprob_helpers():
    logits = torch.randn(2, 4, 5)
    ids = torch.randint(0, 5, (2, 4))
    lp = token_logprobs(logits, ids)
    assert lp.shape == (2, 3)
    assert lp[1, 2].item() == pytest.approx(torch.log_softmax(logits[1, 2], -1)[ids[1, 3]].item(), abs=1e-6)
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]])
    assert torch.allclose(sequence_logprobs(logits, ids, mask), torch.stack([lp[0, 1:].sum(), lp[1, :2].sum()]))
    assert masked_mean(torch.tensor([1.0, 3.0, 100.0]), torch.tensor([1, 1, 0])).item() == 2.0
