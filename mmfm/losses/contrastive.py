"""CLIP's symmetric InfoNCE loss: open_clip's ClipLoss (local_loss=True, gather_with_grad=True) behind mmfm's name.

Under DDP every rank gathers the other ranks' features WITH their gradient (torch.distributed.nn.all_gather),
scores its own B rows against all W*B columns, and averages cross-entropy over its rows; DDP's gradient mean
over ranks then equals the gradient of the full-batch loss on one process (tests/test_clip_ddp.py). The
wrapper only reads the rank and world size when it is called, since tasks build their loss before the process
group exists.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
from open_clip.loss import ClipLoss as _OpenClipLoss
from open_clip.loss import CoCaLoss as _OpenCoCaLoss
from open_clip.loss import SigLipLoss as _OpenSigLipLoss


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ClipLoss(nn.Module):
    """forward(image_features (B, E), text_features (B, E), logit_scale) -> scalar loss.

    Features are expected L2-normalised; pair i of this rank is column rank*B + i of the gathered batch."""

    def __init__(self):
        super().__init__()
        self._impl: dict[tuple[int, int], _OpenClipLoss] = {}  # (rank, world) -> open_clip's loss (not a submodule)

    def forward(self, image_features, text_features, logit_scale):
        key = world()
        if key not in self._impl:
            self._impl[key] = _OpenClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True,
                                            rank=key[0], world_size=key[1])
        return self._impl[key](image_features, text_features, logit_scale)


class SigLipLoss(nn.Module):
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023): open_clip's SigLipLoss behind mmfm's name.

    forward(image_features (B, E), text_features (B, E), logit_scale, logit_bias) -> scalar: every image-text
    pair of the batch is a binary match/no-match problem, -sum(log sigmoid(label * (scale * cos + bias))) / B.
    Under DDP open_clip passes the text features round the ranks ('bidir' neighbour exchange)."""

    def __init__(self):
        super().__init__()
        self._impl: dict[tuple[int, int], _OpenSigLipLoss] = {}

    def forward(self, image_features, text_features, logit_scale, logit_bias):
        key = world()
        if key not in self._impl:
            self._impl[key] = _OpenSigLipLoss(cache_labels=True, rank=key[0], world_size=key[1])
        return self._impl[key](image_features, text_features, logit_scale, logit_bias)


class CocaLoss(nn.Module):
    """CoCa's loss (Yu et al. 2022): open_clip's CoCaLoss behind mmfm's name, the CLIP loss (as ClipLoss: local
    rows against gathered columns) plus next-token cross-entropy of the caption decoder, padding ignored.

    forward(image_features (B, E), text_features (B, E), logits (B, T, V), labels (B, T), logit_scale)
    -> (clip_loss_weight * contrastive, caption_loss_weight * caption), two scalars; their sum is the loss."""

    def __init__(self, caption_loss_weight: float = 2.0, clip_loss_weight: float = 1.0, pad_id: int = 0):
        super().__init__()
        self.weights, self.pad_id = (caption_loss_weight, clip_loss_weight), pad_id
        self._impl: dict[tuple[int, int], _OpenCoCaLoss] = {}

    def forward(self, image_features, text_features, logits, labels, logit_scale):
        key = world()
        if key not in self._impl:
            self._impl[key] = _OpenCoCaLoss(*self.weights, pad_id=self.pad_id, local_loss=True, gather_with_grad=True,
                                            cache_labels=True, rank=key[0], world_size=key[1])
        return self._impl[key](image_features, text_features, logits, labels, logit_scale)


def contrastive_accuracy(image_features, text_features) -> torch.Tensor:
    """Fraction of local images whose best-scoring local caption is their own (a cheap training signal)."""
    sims = image_features @ text_features.T  # (B, B)
    return (sims.argmax(1) == torch.arange(sims.shape[0], device=sims.device)).float().mean()
