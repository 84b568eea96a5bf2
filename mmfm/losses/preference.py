"""Losses for learning from preferences: Bradley-Terry (reward model), the direct preference family
(`preference_loss`: DPO `sigmoid`, `ipo`, `hinge`, `robust`; the reference-free ORPO and the unpaired KTO),
the PPO clipped policy and value losses, GAE, and the token log-prob helpers they share. The group-relative
RL losses (GRPO, DAPO, Dr. GRPO, RLOO) are in mmfm.losses.policy.

Shapes: B sequences, T tokens; masks are bool or {0, 1} with 1 on the tokens that count. Sequence log-probs
are summed over the response tokens unless a function says otherwise.
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


PAIR_LOSSES = ("sigmoid", "ipo", "hinge", "robust")


def preference_loss(loss_type: str, chosen_logps: torch.Tensor, rejected_logps: torch.Tensor,
                    ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float = 0.1,
                    label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair loss (B,) of a direct preference method on sequence log-probs (B,) of the policy and the reference,
    with h = log pi(y_c)/ref(y_c) - log pi(y_r)/ref(y_r):

        sigmoid  DPO (Rafailov et al. 2023)            -log sigmoid(beta h)
        ipo      IPO (Azar et al. 2023, eq. 17)         (h - 1 / (2 beta))^2
        hinge    SLiC (Zhao et al. 2023)                max(0, 1 - beta h)
        robust   rDPO (Chowdhury et al. 2024), labels flipped with probability eps = label_smoothing:
                 ((1 - eps) (-log sigmoid(beta h)) - eps (-log sigmoid(-beta h))) / (1 - 2 eps)

    TRL's IPO divides each log-ratio by its response length; pass per-token mean log-probs for that form."""
    if loss_type not in PAIR_LOSSES:
        raise ValueError(f"loss_type={loss_type!r}: expected one of {', '.join(PAIR_LOSSES)}")
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing={label_smoothing!r}: expected 0 <= eps < 0.5 (the flip probability)")
    h = _margin(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if loss_type == "sigmoid":
        return -F.logsigmoid(beta * h)
    if loss_type == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    if loss_type == "hinge":
        return torch.relu(1 - beta * h)
    eps = label_smoothing
    return (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)


def dpo_loss(pi_c, pi_r, ref_c, ref_r, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO, the batch mean of preference_loss("sigmoid"), and the implicit-reward accuracy (h > 0)."""
    h = _margin(pi_c, pi_r, ref_c, ref_r)
    return preference_loss("sigmoid", pi_c, pi_r, ref_c, ref_r, beta).mean(), (h > 0).float().mean()


def ipo_loss(pi_c, pi_r, ref_c, ref_r, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """IPO, the batch mean of preference_loss("ipo"): a squared loss that does not push h to infinity."""
    h = _margin(pi_c, pi_r, ref_c, ref_r)
    return preference_loss("ipo", pi_c, pi_r, ref_c, ref_r, beta).mean(), (h > 0).float().mean()


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Maechler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """ORPO's odds-ratio term (Hong et al. 2024, eq. 6-7), per pair (B,): -beta log sigmoid(log odds(y_c) -
    log odds(y_r)), odds(y) = p / (1 - p) with p the per-token MEAN probability of the response (no reference
    model). ORPO adds it to the chosen response's NLL; beta is the paper's lambda."""
    c, r = chosen_mean_logps.float(), rejected_mean_logps.float()
    log_odds = (c - r) - (log1mexp(c) - log1mexp(r))
    return -beta * F.logsigmoid(log_odds)


def kto_reference_point(kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO's z0: the batch estimate of KL(pi || ref) from responses paired with the wrong prompts, clamped at 0
    and detached (no gradient flows through the reference point)."""
    return (kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def kto_loss(logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor | float,
             beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024, eq. 7) on unpaired responses, per response (B,): with r = log pi/ref and the
    reference point kl (kto_reference_point), w_d (1 - sigmoid(beta (r - kl))) for a desirable response and
    w_u (1 - sigmoid(beta (kl - r))) for an undesirable one."""
    r = logps - ref_logps
    good = desirable.bool()
    return torch.where(good, desirable_weight * (1 - torch.sigmoid(beta * (r - kl))),
                       undesirable_weight * (1 - torch.sigmoid(beta * (kl - r))))


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
