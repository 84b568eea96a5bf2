"""Task kinds (MedMNIST's four): how many outputs the head has, the loss, and logits -> scores.

| kind       | head outputs | target          | loss                                   | scores            |
|------------|--------------|-----------------|----------------------------------------|-------------------|
| multiclass | K            | (N,) class id   | cross-entropy (class weights)          | softmax (N, K)    |
| binary     | 1            | (N,) 0/1        | BCE with logits (pos_weight)           | sigmoid (N,)      |
| multilabel | L            | (N, L) 0/1      | BCE with logits (per-label pos_weight) | sigmoid (N, L)    |
| ordinal    | K - 1        | (N,) level      | cumulative-link BCE on P(y > k) (CORAL)| P(y = k) (N, K)   |
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

KINDS = ("multiclass", "binary", "multilabel", "ordinal")


def balanced_weights(targets: torch.Tensor, kind: str, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights from training labels: class weights n / (K * n_c) for multiclass and
    ordinal (sklearn's 'balanced'), pos_weight n_neg / n_pos for binary (1,) and multi-label (L,)."""
    if kind in ("multiclass", "ordinal"):
        counts = torch.bincount(targets.long(), minlength=n_classes).float()
        return len(targets) / (n_classes * counts.clamp_min(1))
    t = targets.float().reshape(len(targets), -1)  # (N, 1) binary, (N, L) multi-label
    pos = t.sum(0)
    return (len(t) - pos) / pos.clamp_min(1)


@dataclass
class TaskKind:
    """A task kind with its class count and optional loss weights (see balanced_weights)."""

    kind: str
    n_classes: int
    weight: torch.Tensor | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown task kind {self.kind!r}; choose from {KINDS}")
        if self.n_classes < 2 and self.kind != "multilabel":
            raise ValueError(f"a {self.kind} task needs at least 2 classes, got {self.n_classes}")

    @property
    def n_outputs(self) -> int:
        return {"multiclass": self.n_classes, "binary": 1, "multilabel": self.n_classes,
                "ordinal": self.n_classes - 1}[self.kind]

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(logits.device)
        if self.kind == "multiclass":
            return F.cross_entropy(logits, target, weight=w)
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(logits[:, 0], target.float(), pos_weight=w)
        if self.kind == "multilabel":
            return F.binary_cross_entropy_with_logits(logits, target.float(), pos_weight=w)
        levels = torch.arange(self.n_classes - 1, device=logits.device)
        above = (target[:, None] > levels).float()  # (N, K-1): 1 where y > k
        per = F.binary_cross_entropy_with_logits(logits, above, reduction="none").sum(1)  # (N,)
        if w is None:
            return per.mean()
        return (per * w[target]).sum() / w[target].sum()

    @torch.no_grad()
    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.kind == "multiclass":
            return logits.softmax(-1)
        if self.kind == "binary":
            return logits[:, 0].sigmoid()
        if self.kind == "multilabel":
            return logits.sigmoid()
        # P(y > k) made monotone, then P(y = k) = P(y > k-1) - P(y > k)
        above = logits.sigmoid().flip(1).cummax(1).values.flip(1)  # (N, K-1), non-increasing in k
        ones, zeros = torch.ones_like(above[:, :1]), torch.zeros_like(above[:, :1])
        return torch.cat([ones, above], 1) - torch.cat([above, zeros], 1)  # (N, K)
