"""RLHF with PPO as a plain loop: sample with the KV cache, score with the reward model, penalise the
per-token KL to a frozen reference, estimate advantages with GAE, and take clipped policy and value
steps. One `PPO.step(problems)` = one rollout batch + `epochs` passes of minibatch updates.

Sequences are stored right-padded as prompt + response; "actions" are the response tokens, so every
per-action tensor is (B, T-1), aligned with `token_logprobs` (entry t scores token t+1).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..losses.preference import gae, masked_mean, ppo_policy_loss, ppo_value_loss, token_logprobs
from .chat import encode_prompt, pad_right, stop_ids
from .heads import PolicyWithValue, RewardModel
from .rollout import sample
from .task import Problem, judge, prompt_text


@dataclass
class PPOConfig:
    prompts_per_step: int = 64
    epochs: int = 2  # passes over each rollout batch
    minibatch: int = 32
    lr: float = 1e-4
    clip: float = 0.2
    vf_clip: float = 0.2
    vf_coef: float = 0.1
    kl_coef: float = 0.1  # beta of the per-token KL penalty
    gamma: float = 1.0
    lam: float = 1.0  # 1: the whole return reaches the first tokens (where this task's decisive mistakes are)
    temperature: float = 0.7  # rollouts sample pi_T = softmax(logits / T); PPO, the KL and the ratios use pi_T too
    max_new: int = 64
    rule_weight: float = 0.0  # optional: add rule_weight * [answer is correct] to the RM reward
    grad_clip: float = 1.0


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


class PPO:
    def __init__(self, policy: PolicyWithValue, reference, reward_model: RewardModel, tok, cfg: PPOConfig,
                 seed: int = 0):
        self.policy, self.ref, self.rm, self.tok, self.cfg = policy, reference, reward_model, tok, cfg
        for frozen in (self.ref, self.rm):
            frozen.eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.95))
        self.rng, self.gen = random.Random(seed), torch.Generator().manual_seed(seed)
        self.score_norm: tuple[float, float] | None = None  # RM score mean/std of the first batch

    @torch.no_grad()
    def rollout(self, problems: list[Problem]) -> dict[str, torch.Tensor]:
        cfg, tok = self.cfg, self.tok
        prompts = [encode_prompt(tok, prompt_text(p, self.rng)) for p in problems]
        responses = sample(self.policy.gpt, prompts, cfg.max_new, stop_ids(tok), tok.pad_id, cfg.temperature, self.gen)
        ids, mask = pad_right([p + r for p, r in zip(prompts, responses)], tok.pad_id)  # (B, T)
        resp, _ = pad_right([[0] * len(p) + [1] * len(r) for p, r in zip(prompts, responses)], 0)
        act = resp[:, 1:].bool()  # (B, T-1) actions = response tokens
        self.policy.eval()
        logits, values = self.policy(ids)
        logp, ref_logp = self._logprobs(logits, ids), self._logprobs(self.ref(ids), ids)
        score = self._score(ids, mask, problems, responses)
        rewards = -cfg.kl_coef * (logp - ref_logp) * act  # (B, T-1)
        last = act.long().cumsum(1).argmax(1)  # index of each row's final action
        rewards[torch.arange(len(ids)), last] += score
        values = values[:, :-1] * act
        adv, returns = gae(rewards, values, act, cfg.gamma, cfg.lam)
        texts = [tok.decode(r) for r in responses]
        stats = {"reward": score.mean(), "kl": ((logp - ref_logp) * act).sum(1).mean(),
                 "accuracy": torch.tensor([judge(p, t)[0] == 2 for p, t in zip(problems, texts)]).float().mean(),
                 "response_len": act.sum(1).float().mean()}
        return {"ids": ids, "act": act, "logp": logp, "values": values, "adv": whiten(adv, act),
                "returns": returns, "stats": stats}

    def _logprobs(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Token log-probs (B, T-1) of the sampling distribution, softmax(logits / temperature)."""
        return token_logprobs(logits / self.cfg.temperature, ids)

    def _score(self, ids, mask, problems, responses) -> torch.Tensor:
        """Reward-model score, standardised with the first batch's mean/std (+ the optional rule)."""
        score = self.rm(ids, mask)
        if self.score_norm is None:
            self.score_norm = (float(score.mean()), float(score.std()) + 1e-6)
        score = (score - self.score_norm[0]) / self.score_norm[1]
        if self.cfg.rule_weight:
            rule = [judge(p, self.tok.decode(r))[0] == 2 for p, r in zip(problems, responses)]
            score = score + self.cfg.rule_weight * torch.tensor(rule, dtype=score.dtype)
        return score

    def update(self, batch: dict) -> dict[str, float]:
        cfg, n = self.cfg, len(batch["ids"])
        self.policy.train()
        out = {"pg_loss": 0.0, "vf_loss": 0.0, "clipfrac": 0.0, "approx_kl": 0.0}
        count = 0
        for _ in range(cfg.epochs):
            for idx in torch.randperm(n, generator=self.gen).split(cfg.minibatch):
                ids, act = batch["ids"][idx], batch["act"][idx]
                width = int(act.nonzero()[:, 1].max()) + 2  # drop all-padding columns at the end
                logits, values = self.policy(ids[:, :width])
                logp = self._logprobs(logits, ids[:, :width])
                act = act[:, : width - 1]
                pg, st = ppo_policy_loss(logp, batch["logp"][idx, : width - 1], batch["adv"][idx, : width - 1], act, cfg.clip)
                vf = ppo_value_loss(values[:, :-1], batch["values"][idx, : width - 1],
                                    batch["returns"][idx, : width - 1], act, cfg.vf_clip)
                self.opt.zero_grad(set_to_none=True)
                (pg + cfg.vf_coef * vf).backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.grad_clip)
                self.opt.step()
                for k, v in (("pg_loss", pg), ("vf_loss", vf), *st.items()):
                    out[k] += float(v.detach())
                count += 1
        return {k: v / count for k, v in out.items()}

    def step(self, problems: list[Problem]) -> dict[str, float]:
        batch = self.rollout(problems)
        return {**{k: float(v) for k, v in batch["stats"].items()}, **self.update(batch)}
