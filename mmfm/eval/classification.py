"""Classification metrics (torchmetrics) for the four task kinds, and a confusion-matrix plot.

`scores` are what `mmfm.adapt.kinds.TaskKind.scores` returns: class probabilities (N, K) for
multi-class and ordinal, the positive-class probability (N,) for binary, per-label probabilities
(N, L) for multi-label. Every average over classes is macro (each class counts the same).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torchmetrics.functional.classification as tmc


def _safe(fn, *args, **kw) -> float:
    """AUROC is undefined when a split lacks a class; report NaN rather than fail."""
    try:
        value = fn(*args, **kw)
    except (ValueError, RuntimeError):
        return float("nan")
    return float(value)


def multiclass_metrics(probs: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    k = probs.shape[1]
    pred = probs.argmax(1)
    m = {"accuracy": tmc.multiclass_accuracy(pred, target, k, average="micro"),
         "balanced_accuracy": tmc.multiclass_recall(pred, target, k, average="macro"),
         "auroc": _safe(tmc.multiclass_auroc, probs, target, k, average="macro"),
         "precision": tmc.multiclass_precision(pred, target, k, average="macro"),
         "recall": tmc.multiclass_recall(pred, target, k, average="macro"),
         "f1": tmc.multiclass_f1_score(pred, target, k, average="macro")}
    return {key: float(v) for key, v in m.items()}


def binary_metrics(prob: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    pred = (prob >= threshold).long()
    m = {"accuracy": tmc.binary_accuracy(pred, target),
         "balanced_accuracy": tmc.multiclass_recall(pred, target, 2, average="macro"),
         "auroc": _safe(tmc.binary_auroc, prob, target),
         "precision": tmc.binary_precision(pred, target),
         "recall": tmc.binary_recall(pred, target),
         "f1": tmc.binary_f1_score(pred, target)}
    return {key: float(v) for key, v in m.items()}


def multilabel_metrics(probs: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> dict[str, float]:
    n, target = probs.shape[1], target.long()
    sens = tmc.multilabel_recall(probs, target, n, threshold, average=None)
    spec = tmc.multilabel_specificity(probs, target, n, threshold, average=None)
    m = {"accuracy": tmc.multilabel_accuracy(probs, target, n, threshold, average="micro"),
         "exact_match": tmc.multilabel_exact_match(probs, target, n, threshold),
         "balanced_accuracy": ((sens + spec) / 2).mean(),
         "auroc": _safe(tmc.multilabel_auroc, probs, target, n, average="macro"),
         "precision": tmc.multilabel_precision(probs, target, n, threshold, average="macro"),
         "recall": tmc.multilabel_recall(probs, target, n, threshold, average="macro"),
         "f1": tmc.multilabel_f1_score(probs, target, n, threshold, average="macro")}
    return {key: float(v) for key, v in m.items()}


def classification_metrics(kind: str, scores: torch.Tensor, target: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """Flat {prefix + name: value} for a task kind; ordinal adds the mean absolute error in classes."""
    scores, target = scores.float().cpu(), target.cpu()
    if kind == "multiclass":
        m = multiclass_metrics(scores, target)
    elif kind == "ordinal":
        m = multiclass_metrics(scores, target)
        m["mae"] = float((scores.argmax(1) - target).abs().float().mean())
    elif kind == "binary":
        m = binary_metrics(scores, target)
    elif kind == "multilabel":
        m = multilabel_metrics(scores, target)
    else:
        raise ValueError(f"unknown task kind {kind!r}")
    return {f"{prefix}{k}": v for k, v in m.items()}


def confusion(kind: str, scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(K, K) counts (rows: true, columns: predicted); multi-label: (L, 2, 2) per label."""
    scores, target = scores.float().cpu(), target.cpu()
    if kind in ("multiclass", "ordinal"):
        return tmc.multiclass_confusion_matrix(scores.argmax(1), target, scores.shape[1])
    if kind == "binary":
        return tmc.binary_confusion_matrix(scores, target)
    return tmc.multilabel_confusion_matrix(scores, target.long(), scores.shape[1])


def plot_confusion(matrix: torch.Tensor, names: list[str], path: str | Path, title: str = "") -> Path:
    """A PNG of a (K, K) confusion matrix normalised per true class, with counts in the cells.
    A (L, 2, 2) multi-label stack is drawn as an (L, 4) table of TN, FP, FN, TP."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = matrix.float()
    multilabel = m.dim() == 3
    if multilabel:
        m = m.reshape(m.shape[0], 4)  # (L, [TN, FP, FN, TP])
    rates = m / m.sum(1, keepdim=True).clamp_min(1)
    size = max(4.0, 0.45 * m.shape[0] + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=110)
    ax.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    cols = ["TN", "FP", "FN", "TP"] if multilabel else names
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("predicted" if not multilabel else "outcome")
    ax.set_ylabel("true" if not multilabel else "label")
    for (i, j), v in ((ij, m[ij].item()) for ij in ((a, b) for a in range(m.shape[0]) for b in range(m.shape[1]))):
        ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=7,
                color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
