"""Losses for learning from preferences: Bradley-Terry (reward model), DPO and IPO (direct),
the PPO clipped policy and value losses, GAE, and the token log-prob helpers they share.

Shapes: B sequences, T tokens; masks are bool or {0, 1} with 1 on the tokens that count.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log p(ids[:, t+1] | ids[:, :t+1]) from logits (B, T, V) -> (B, T-1)."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    return logp.gather(-1, ids[:, 1:, None]).squeeze(-1)


def sequence_logprobs(logits: torch.Tensor, ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Sum of the log-probs of the tokens where loss_mask (B, T) is set (the response) -> (B,)."""
    return (token_logprobs(logits, ids) * loss_mask[:, 1:].float()).sum(-1)


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """-log sigmoid(r_c - r_r), and the pairwise accuracy (r_c > r_r)."""
    diff = r_chosen - r_rejected
    return -F.logsigmoid(diff).mean(), (diff > 0).float().mean()


def _margin(pi_c, pi_r, ref_c, ref_r):
    """h = log pi(y_c)/ref(y_c) - log pi(y_r)/ref(y_r), one per pair (B,)."""
    return (pi_c - ref_c) - (pi_r - ref_r)


def dpo_loss(pi_c, pi_r, ref_c, ref_r, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023): -log sigmoid(beta * h). Returns (loss, implicit-reward accuracy)."""
    h = _margin(pi_c, pi_r, ref_c, ref_r)
    return -F.logsigmoid(beta * h).mean(), (h > 0).float().mean()


def ipo_loss(pi_c, pi_r, ref_c, ref_r, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """IPO (Azar et al. 2023): (h - 1 / (2 beta))^2, a squared loss that does not push h to infinity."""
    h = _margin(pi_c, pi_r, ref_c, ref_r)
    return ((h - 1 / (2 * beta)) ** 2).mean(), (h > 0).float().mean()


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens (B, T), valid tokens first then padding;
    the value after the last valid token is 0 (the episode ends). Returns (advantages, returns)."""
    mask = mask.to(values.dtype)
    B, T = rewards.shape
    adv = torch.zeros_like(values)
    last = torch.zeros(B, dtype=values.dtype, device=values.device)
    for t in reversed(range(T)):
        nxt_mask = mask[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        nxt_value = values[:, t + 1] * nxt_mask if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * nxt_value - values[:, t]
        last = (delta + gamma * lam * nxt_mask * last) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


def ppo_policy_loss(logp, old_logp, advantages, mask, clip: float = 0.2) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate: -min(ratio A, clip(ratio, 1-eps, 1+eps) A), averaged over valid tokens."""
    ratio = torch.exp(logp - old_logp)
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    stats = {"clipfrac": masked_mean(((ratio - 1).abs() > clip).float(), mask),
             "approx_kl": masked_mean(0.5 * (logp - old_logp) ** 2, mask)}
    return -masked_mean(surrogate, mask), stats


def ppo_value_loss(values, old_values, returns, mask, clip: float = 0.2) -> torch.Tensor:
    """max((v - R)^2, (clip(v, v_old +- eps) - R)^2) / 2, averaged over valid tokens."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)
