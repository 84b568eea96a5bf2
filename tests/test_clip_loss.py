"""mmfm's contrastive loss equals open_clip's ClipLoss; the training module's pieces behave."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmfm.losses.contrastive import ClipLoss, contrastive_accuracy
from mmfm.train.optim import param_groups, warmup_cosine


@pytest.mark.parametrize("batch,dim,scale", [(8, 16, 1 / 0.07), (33, 32, 100.0), (2, 4, 1.0)])
def test_loss_equals_open_clip(batch, dim, scale):
    from open_clip.loss import ClipLoss as OpenClipLoss

    img = F.normalize(torch.randn(batch, dim, dtype=torch.float64, requires_grad=True), dim=-1)
    txt = F.normalize(torch.randn(batch, dim, dtype=torch.float64, requires_grad=True), dim=-1)
    s = torch.tensor(scale, dtype=torch.float64)
    ours, ref = ClipLoss()(img, txt, s), OpenClipLoss(local_loss=True, gather_with_grad=True)(img, txt, s)
    assert torch.allclose(ours, ref, atol=1e-12)
    g1 = torch.autograd.grad(ours, (img, txt), retain_graph=True)
    g2 = torch.autograd.grad(ref, (img, txt))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-12)


def test_perfect_pairs_give_low_loss_and_full_accuracy():
    feats = torch.eye(6)
    assert ClipLoss()(feats, feats, torch.tensor(100.0)) < 1e-6
    assert contrastive_accuracy(feats, feats) == 1.0
    shuffled = feats[torch.tensor([1, 0, 2, 3, 4, 5])]
    assert contrastive_accuracy(feats, shuffled) == pytest.approx(4 / 6)
    # uniform similarities: loss = log(B)
    assert ClipLoss()(torch.ones(6, 3), torch.ones(6, 3), torch.tensor(1.0)).item() == pytest.approx(math.log(6))


def test_schedule_and_decay_groups():
    f = warmup_cosine(10, 110, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    import mmfm

    model = mmfm.build_model("clip-test")
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert any(p is model.logit_scale for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
