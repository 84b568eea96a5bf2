"""Language-model losses: next-token cross-entropy and per-token log-probabilities."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def lm_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
            reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of logits (B, T, V) against targets (B, T), already shifted (targets[t] follows
    input t). Positions equal to `ignore_index` count for nothing. Nats per token."""
    B, T, V = logits.shape
    loss = F.cross_entropy(logits.reshape(B * T, V).float(), targets.reshape(B * T), ignore_index=ignore_index,
                           reduction=reduction)  # (B*T,) or ()
    return loss.view(B, T) if reduction == "none" else loss


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets) under logits: (B, T, V), (B, T) -> (B, T)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
