"""mmfm's contrastive loss equals open_clip's ClipLoss; the training module's pieces behave."""
import math

import pytest
import torch
import torch.nn.functional as F

from mmfm.losses.contrastive import ClipLoss, contrastive_accuracy
from mmfm.train.optim import param_groups, warmup_cosine


def reference_clip_loss(image, text, scale, rank=0, all_image=None, all_text=None):
    """The symmetric InfoNCE loss written out (mmfm's own implementation before it became open_clip's): this rank's
    rows against every rank's columns (all_* = the gathered features; the local ones on one process)."""
    all_image = image if all_image is None else all_image
    all_text = text if all_text is None else all_text
    labels = torch.arange(len(image)) + rank * len(image)
    return (F.cross_entropy(scale * image @ all_text.T, labels) + F.cross_entropy(scale * text @ all_image.T, labels)) / 2


@pytest.mark.parametrize("batch,dim,scale", [(8, 16, 1 / 0.07), (33, 32, 100.0), (2, 4, 1.0)])
def test_loss_equals_the_formula_and_open_clip(batch, dim, scale):
    from open_clip.loss import ClipLoss as OpenClipLoss

    img = F.normalize(torch.randn(batch, dim, dtype=torch.float64, requires_grad=True), dim=-1)
    txt = F.normalize(torch.randn(batch, dim, dtype=torch.float64, requires_grad=True), dim=-1)
    s = torch.tensor(scale, dtype=torch.float64)
    ours, ref = ClipLoss()(img, txt, s), reference_clip_loss(img, txt, s)
    assert torch.allclose(ours, ref, atol=1e-12)
    assert torch.equal(ours, OpenClipLoss(local_loss=True, gather_with_grad=True)(img, txt, s))
    g1 = torch.autograd.grad(ours, (img, txt), retain_graph=True)
    g2 = torch.autograd.grad(ref, (img, txt))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-12)


def test_loss_is_open_clips_and_reads_the_world_at_call_time(monkeypatch):
    """The task builds its loss before the process group exists: the rank is read on each call."""
    import mmfm.losses.contrastive as contrastive

    img, txt = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    loss = ClipLoss()
    loss(img, txt, torch.tensor(10.0))
    monkeypatch.setattr(contrastive, "world", lambda: (1, 2))
    monkeypatch.setattr("open_clip.loss.gather_features", lambda i, t, **kw: (torch.cat([t, i]), torch.cat([i, t])))
    swapped = loss(img, txt, torch.tensor(10.0))  # rank 1 of 2, rank 0 holding the pairs (txt, img)
    ref = reference_clip_loss(img, txt, 10.0, rank=1, all_image=torch.cat([txt, img]),
                              all_text=torch.cat([img, txt]))
    assert torch.allclose(swapped, ref, atol=1e-6)
    assert sorted(loss._impl) == [(0, 1), (1, 2)] and not list(loss.children())


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
