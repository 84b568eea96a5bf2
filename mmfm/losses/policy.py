"""Group-relative policy-gradient losses (no value model): advantages from G completions of the same prompt, and
the clipped importance-ratio objectives by the names TRL gives them.

    adv = group_advantages(rewards, G)                      # reward - group mean, / group std
    loss, stats = group_policy_loss("dapo", logp, old_logp, adv, mask, eps_low=0.2, eps_high=0.28)

Shapes: N = P prompts x G completions, ordered prompt by prompt (rows i*G .. i*G+G-1 share prompt i); per-token
tensors (N, T) over response positions with `mask` 1 on the sampled tokens. `old_logp` are the log-probs of the
distribution the tokens were actually sampled from (temperature, top-k/top-p); `sampling_logprobs` gives the
policy's log-probs under that same transform.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.generation import filter_logits
from .preference import masked_mean

GROUP_LOSSES = ("grpo", "bnpo", "dapo", "dr_grpo", "rloo")
SCALES = ("group", "batch", "none")


def sampling_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                      top_p: float | None = None) -> torch.Tensor:
    """log pi(ids[:, t+1] | ids[:, :t+1]) under softmax(filter(logits / temperature)) -> (B, T-1); a token outside
    the filtered set gets log-prob -1e4 (ratio 0, no gradient) instead of -inf."""
    z = logits[:, :-1].float() / temperature  # (B, T-1, V)
    if (top_k is not None and top_k > 0) or (top_p is not None and top_p < 1.0):
        z = filter_logits(z.reshape(-1, z.shape[-1]), top_k, top_p).view_as(z)  # (B*(T-1), V) -> (B, T-1, V)
    logp = F.log_softmax(z, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return logp.clamp(min=-1e4)


def group_advantages(rewards: torch.Tensor, group: int, baseline: str = "mean", scale: str = "group",
                     eps: float = 1e-4) -> torch.Tensor:
    """Advantages (N,) of rewards (N,) in groups of `group` consecutive completions.

    baseline "mean" (GRPO): r - mean of the group; "leave_one_out" (RLOO, Ahmadian et al. 2024): r - mean of the
    other G-1 completions. scale "group": divided by the group's std (+eps; GRPO); "batch": with the mean
    baseline divided by the std of all rewards (TRL's scale_rewards="batch"), with leave-one-out standardised over
    the batch (TRL's RLOO normalize_advantages); "none": as is (Dr. GRPO). Stds are unbiased (Bessel), as TRL's."""
    if baseline not in ("mean", "leave_one_out"):
        raise ValueError(f"baseline={baseline!r}: expected 'mean' or 'leave_one_out'")
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r}: expected one of {', '.join(SCALES)}")
    if group < 2 or rewards.numel() % group:
        raise ValueError(f"group={group}: need >= 2 completions per prompt dividing the {rewards.numel()} rewards")
    r = rewards.float().view(-1, group)  # (P, G)
    if baseline == "mean":
        adv = r - r.mean(1, keepdim=True)
    else:
        adv = r - (r.sum(1, keepdim=True) - r) / (group - 1)
    if scale == "group":
        adv = adv / (r.std(1, keepdim=True) + eps)
    elif scale == "batch" and baseline == "mean":
        adv = adv / (r.std() + eps)
    elif scale == "batch":
        adv = (adv - adv.mean()) / (adv.std() + eps)
    return adv.reshape(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || ref) estimate exp(ref - logp) - (ref - logp) - 1 >= 0 (Schulman's k3; TRL's GRPO KL)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def _clip_stats(ratio, adv, mask, eps_low, eps_high) -> dict[str, torch.Tensor]:
    low = ((ratio < 1 - eps_low) & (adv < 0)).float()
    high = ((ratio > 1 + eps_high) & (adv > 0)).float()
    return {"clip_low": masked_mean(low, mask), "clip_high": masked_mean(high, mask)}


def group_policy_loss(loss_type: str, logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      mask: torch.Tensor, eps_low: float = 0.2, eps_high: float = 0.2, ref_logp: torch.Tensor | None = None,
                      beta: float = 0.0, n_tokens: float | None = None, max_len: int | None = None
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate -min(ratio A, clip(ratio, 1-eps_low, 1+eps_high) A) (+ beta k3 KL to `ref_logp`),
    aggregated as the loss names it:

        grpo     per-sequence mean over its tokens, then mean over sequences (Shao et al. 2024)
        bnpo     mean over all tokens of this batch
        dapo     sum over tokens / n_tokens, the token count of the whole rollout batch per optimizer step
                 (Yu et al. 2025; with eps_high > eps_low, "clip-higher"); default n_tokens: this batch's
        dr_grpo  sum over tokens / (sequences x max_len), no length normalisation (Liu et al. 2025)
        rloo     one ratio per sequence, exp(sum of token log-ratios), clipped; mean over sequences (the KL
                 penalty of RLOO belongs in the reward: beta must be 0 here)

    logp, old_logp, ref_logp, mask (N, T); advantages (N,). Returns (loss, stats)."""
    if loss_type not in GROUP_LOSSES:
        raise ValueError(f"loss_type={loss_type!r}: expected one of {', '.join(GROUP_LOSSES)}")
    mask = mask.to(logp.dtype)
    adv = advantages[:, None].to(logp.dtype)  # (N, 1)
    if loss_type == "rloo":
        if beta:
            raise ValueError("rloo applies its KL penalty to the reward (reward - beta * KL); pass beta=0 here")
        ratio = torch.exp(((logp - old_logp) * mask).sum(-1, keepdim=True))  # (N, 1)
        per_seq = -torch.min(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
        stats = _clip_stats(ratio, adv, torch.ones_like(ratio), eps_low, eps_high)
        return per_seq.mean(), {**stats, "ratio": ratio.mean()}
    ratio = torch.exp(logp - old_logp)  # (N, T)
    per_token = -torch.min(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
    stats = _clip_stats(ratio, adv, mask, eps_low, eps_high)
    if beta:
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + beta * kl
        stats["kl"] = masked_mean(kl, mask)
    if loss_type == "grpo":
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    elif loss_type == "bnpo":
        loss = (per_token * mask).sum() / mask.sum().clamp(min=1)
    elif loss_type == "dapo":
        loss = (per_token * mask).sum() / max(float(mask.sum()) if n_tokens is None else n_tokens, 1.0)
    else:
        if max_len is None:
            raise ValueError("dr_grpo normalises by the completion budget: pass max_len (max new tokens)")
        loss = (per_token * mask).sum() / (mask.shape[0] * max_len)
    stats["ratio"] = masked_mean(ratio, mask)
    return loss, stats
