"""Task kinds: losses, weighted losses, scores and metrics for multi-class, binary, multi-label and ordinal;
label subsets and backbone input preparation."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmfm.adapt import TaskKind, balanced_weights
from mmfm.adapt.data import label_subset, to_backbone_input
from mmfm.eval.classification import classification_metrics, confusion, plot_confusion

KEYS = {"accuracy", "balanced_accuracy", "auroc", "precision", "recall", "f1"}


def _perfect_logits(kind: TaskKind, target):
    """Logits whose decoded prediction is exactly `target`."""
    if kind.kind == "multiclass":
        return F.one_hot(target, kind.n_classes).float() * 10
    if kind.kind == "binary":
        return (target.float()[:, None] * 2 - 1) * 10
    if kind.kind == "multilabel":
        return (target * 2 - 1) * 10
    return ((target[:, None] > torch.arange(kind.n_classes - 1)).float() * 2 - 1) * 10  # ordinal


def _targets(kind: TaskKind, n=40):
    g = torch.Generator().manual_seed(0)
    if kind.kind == "multilabel":
        return (torch.rand(n, kind.n_classes, generator=g) > 0.5).float()
    high = 2 if kind.kind == "binary" else kind.n_classes
    return torch.arange(n) % high  # every class present


@pytest.mark.parametrize("name,k,outputs", [("multiclass", 4, 4), ("binary", 2, 1), ("multilabel", 5, 5),
                                             ("ordinal", 5, 4)])
def test_kind_loss_scores_metrics(name, k, outputs, tmp_path):
    kind = TaskKind(name, k)
    assert kind.n_outputs == outputs
    target = _targets(kind)
    logits = torch.randn(len(target), outputs, requires_grad=True)
    loss = kind.loss(logits, target)
    loss.backward()
    assert loss.item() > 0 and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    scores = kind.scores(logits)
    if name in ("multiclass", "ordinal"):
        assert scores.shape == (len(target), k) and (scores >= 0).all()
        torch.testing.assert_close(scores.sum(1), torch.ones(len(target)))
    good = classification_metrics(name, kind.scores(_perfect_logits(kind, target)), target, prefix="test/")
    assert KEYS <= {key.removeprefix("test/") for key in good}
    for key in KEYS:
        assert good[f"test/{key}"] == pytest.approx(1.0), key
    assert kind.loss(_perfect_logits(kind, target), target) < loss
    chance = classification_metrics(name, scores, target)
    assert 0 <= chance["accuracy"] <= 1 and 0 <= chance["balanced_accuracy"] <= 1
    m = confusion(name, scores, target)
    assert m.sum() == target.numel()
    assert plot_confusion(m, [str(i) for i in range(k)], tmp_path / "c.png").stat().st_size > 1000


def test_ordinal_mae_and_monotone_scores():
    kind = TaskKind("ordinal", 4)
    target = torch.tensor([0, 1, 2, 3])
    m = classification_metrics("ordinal", kind.scores(_perfect_logits(kind, target)), target)
    assert m["mae"] == 0
    shifted = classification_metrics("ordinal", kind.scores(_perfect_logits(kind, (target + 1).clamp(max=3))), target)
    assert shifted["mae"] == pytest.approx(0.75)
    odd = kind.scores(torch.tensor([[-3.0, 2.0, 1.0]]))  # non-monotone P(y > k) is made monotone
    assert (odd >= 0).all() and odd.sum().item() == pytest.approx(1.0)


def test_balanced_weights_and_weighted_losses():
    y = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)
    w = balanced_weights(y, "multiclass", 3)
    torch.testing.assert_close(w, torch.tensor([10 / 18, 10 / 9, 10 / 3]))
    logits = torch.randn(10, 3)
    weighted = TaskKind("multiclass", 3, w).loss(logits, y)
    torch.testing.assert_close(weighted, F.cross_entropy(logits, y, weight=w))
    assert not torch.isclose(weighted, TaskKind("multiclass", 3).loss(logits, y))
    yb = torch.tensor([1, 0, 0, 0])
    torch.testing.assert_close(balanced_weights(yb, "binary", 2), torch.tensor([3.0]))
    ym = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    torch.testing.assert_close(balanced_weights(ym, "multilabel", 2), torch.tensor([1 / 3, 3.0]))
    # a positive-weighted binary loss punishes missed positives more
    miss = torch.tensor([[-2.0], [-2.0], [-2.0], [-2.0]])
    assert TaskKind("binary", 2, torch.tensor([3.0])).loss(miss, yb) > TaskKind("binary", 2).loss(miss, yb)
    yo = torch.tensor([0, 0, 0, 2])
    wo = balanced_weights(yo, "ordinal", 3)
    lo = torch.randn(4, 2)
    assert TaskKind("ordinal", 3, wo).loss(lo, yo).isfinite()


def test_label_subset_is_stratified_and_seeded():
    y = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    idx = label_subset(y, 0.1, seed=3)
    assert set(y[idx].tolist()) == {0, 1, 2} and len(idx) == 9 + 1 + 1
    assert torch.equal(idx, label_subset(y, 0.1, seed=3)) and not torch.equal(idx, label_subset(y, 0.1, seed=4))
    assert len(label_subset(y, 1.0)) == 100
    assert len(label_subset(torch.zeros(50, 3), 0.2)) == 10
    with pytest.raises(ValueError):
        label_subset(y, 0.0)


def test_backbone_input_channels_size_and_normalisation():
    rgb = np.full((2, 20, 20, 3), 255, dtype=np.uint8)
    rgb[..., 0] = 0
    x = to_backbone_input(rgb, 32, 1, (0.5,), (0.5,))  # RGB -> grey for a 1-channel backbone, resized
    assert x.shape == (2, 1, 32, 32)
    torch.testing.assert_close(x, torch.full_like(x, (2 / 3 - 0.5) / 0.5))
    grey = to_backbone_input(np.zeros((1, 28, 28), np.uint8), 28, 3, (0.4, 0.5, 0.6), (0.2, 0.2, 0.2))
    assert grey.shape == (1, 1, 28, 28) and grey[0, 0, 0, 0].item() == pytest.approx(-2.5)
