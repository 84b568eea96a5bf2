"""CLIP's symmetric InfoNCE loss, equal to open_clip's ClipLoss (local_loss=True, gather_with_grad=True).

Under DDP every rank gathers the other ranks' features WITH their gradient (torch.distributed.nn.all_gather),
scores its own B rows against all W*B columns, and averages cross-entropy over its rows; DDP's gradient mean
over ranks then equals the gradient of the full-batch loss on one process (tests/test_clip_ddp.py).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, E) on each rank -> (W*B, E) in rank order; gradients flow back to every rank's features."""
    rank, size = world()
    if size == 1:
        return x
    import torch.distributed.nn

    # the autograd all_gather open_clip uses (torch >= 2.10 flags it deprecated in favour of a private API)
    return torch.cat(torch.distributed.nn.all_gather(x), dim=0)  # (W*B, E)


def clip_logits(image_features, text_features, logit_scale):
    """Local rows against gathered columns: (B, W*B) image->text and text->image logits."""
    all_image, all_text = gather_with_grad(image_features), gather_with_grad(text_features)
    return logit_scale * image_features @ all_text.T, logit_scale * text_features @ all_image.T


class ClipLoss(nn.Module):
    """forward(image_features (B, E), text_features (B, E), logit_scale) -> scalar loss.

    Features are expected L2-normalised; pair i of this rank is column rank*B + i of the gathered batch."""

    def forward(self, image_features, text_features, logit_scale):
        rank, _ = world()
        logits_i, logits_t = clip_logits(image_features, text_features, logit_scale)
        n = image_features.shape[0]
        labels = torch.arange(n, device=image_features.device) + rank * n
        return (F.cross_entropy(logits_i, labels) + F.cross_entropy(logits_t, labels)) / 2


def contrastive_accuracy(image_features, text_features) -> torch.Tensor:
    """Fraction of local images whose best-scoring local caption is their own (a cheap training signal)."""
    sims = image_features @ text_features.T  # (B, B)
    return (sims.argmax(1) == torch.arange(sims.shape[0], device=sims.device)).float().mean()
