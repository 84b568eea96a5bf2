"""RLHF with PPO as a LightningModule with manual optimization: each training step samples a rollout batch with
the KV cache, scores it with the reward terms (reward-model folders and/or reward functions), penalises the
per-token KL to a frozen reference, estimates advantages with GAE, then takes `epochs` passes of clipped policy
and value minibatch steps. Progress bar, checkpoints, --resume and --devices come from the Trainer.

Sequences are stored right-padded as prompt + response; "actions" are the response tokens, so every
per-action tensor is (B, T-1), aligned with `token_logprobs` (entry t scores token t+1). One PPO step makes
`updates_per_step` optimizer steps, which is what Lightning counts as its global step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..config import opt
from ..losses.preference import gae, masked_mean, ppo_policy_loss, ppo_value_loss, token_logprobs
from ..train.optim import build_optimizer
from ..train.strategies import ShardedTask, full_weights
from .chat import decode_response, pad_right, stop_ids
from .formats import Example, encode_example
from .heads import PolicyWithValue
from .rewards import RewardTerm, call_reward
from .rollout import sample


@dataclass
class PPOConfig:
    prompts_per_step: int = opt(64, lo=1)
    epochs: int = opt(2, lo=1)  # passes over each rollout batch
    minibatch: int = opt(32, lo=1)
    lr: float = opt(1e-4, gt=0.0)
    clip: float = opt(0.2, gt=0.0)
    vf_clip: float = opt(0.2, gt=0.0)
    vf_coef: float = 0.1
    kl_coef: float = opt(0.1, lo=0.0)  # beta of the per-token KL penalty
    gamma: float = opt(1.0, lo=0.0, hi=1.0)
    lam: float = opt(1.0, lo=0.0, hi=1.0)  # 1: the whole return reaches the first tokens (where this task's decisive mistakes are)
    temperature: float = opt(0.7, gt=0.0)  # rollouts sample pi_T = softmax(logits / T); PPO, the KL and the ratios use pi_T too
    max_new: int = opt(64, lo=1)
    grad_clip: float = opt(1.0, lo=0.0)

    def updates_per_step(self) -> int:
        return self.epochs * math.ceil(self.prompts_per_step / self.minibatch)


class Prompts(Dataset):
    """RL prompts -> {"ids": chat-encoded prompt ready for the answer, "prompt": as written, "extra": columns}."""

    def __init__(self, tok, examples: list[Example], max_len: int | None = None):
        self.rows = [{"ids": encode_example(tok, e.turns, e.where, max_len, add_generation_prompt=True)[0],
                      "prompt": e.raw_prompt if e.raw_prompt is not None else e.turns[-1].content, "extra": e.extra}
                     for e in examples]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def response_width(act: torch.Tensor) -> int:
    """Columns of a right-padded (B, T) minibatch that hold its responses, from its (B, T-1) action mask: the
    all-padding columns at the end can be dropped."""
    return int(act.nonzero()[:, 1].max()) + 2 if act.any() else 2


def minibatch_steps(task: L.LightningModule, n: int, loss_fn) -> dict[str, float]:
    """The update of PPO and GRPO: `task.cfg.epochs` passes over a rollout batch of n rows in shuffled minibatches of
    `cfg.minibatch`, one gradient-clipped optimizer step on `loss_fn(idx) -> (loss, {name: value})` each; returns
    the mean of the loss and of every value over the steps."""
    cfg, opt = task.cfg, task.optimizers()
    task.policy.train()
    out, count = {}, 0
    for _ in range(cfg.epochs):
        for idx in torch.randperm(n, device=task.score_norm.device).split(cfg.minibatch):
            loss, stats = loss_fn(idx)
            opt.zero_grad(set_to_none=True)
            task.manual_backward(loss)
            task.clip_gradients(opt, gradient_clip_val=cfg.grad_clip, gradient_clip_algorithm="norm")
            opt.step()
            for k, v in (("loss", loss), *stats.items()):
                out[k] = out.get(k, 0.0) + float(v.detach())
            count += 1
    return {k: v / count for k, v in out.items()}


class PPOTask(ShardedTask, L.LightningModule):
    """Under --strategy fsdp the policy (with its value head) is sharded, the frozen reference and reward models
    are replicated, and rollouts sample with the policy's full weights held (ranks stop sampling at different
    lengths)."""

    def __init__(self, policy: PolicyWithValue, reference: nn.Module, rewards: list[RewardTerm], tok, cfg: PPOConfig):
        super().__init__()
        self.automatic_optimization = False
        self.policy, self.ref, self.terms, self.tok, self.cfg = policy, reference, rewards, tok, cfg
        self.reward_models = nn.ModuleList([t.model for t in rewards if t.model is not None])
        for frozen in (self.ref, self.reward_models):
            frozen.eval().requires_grad_(False)
        # mean, std of each reward model's scores on the first rollout (std 0: not yet seen); checkpointed
        self.register_buffer("score_norm", torch.zeros(len(self.reward_models), 2))
        self.history: list[dict] = []

    def configure_optimizers(self):
        # not fused: Lightning's mixed-precision plugins refuse to clip the gradients of a fused optimizer
        return build_optimizer(self.policy, self.cfg.lr, 0.0, betas=(0.9, 0.95), fused=False)

    def score(self, batch: list[dict], responses: list[list[int]], ids, mask) -> tuple[torch.Tensor, dict]:
        """Weighted sum of the reward terms (B,), and each term's batch mean. A reward model's scores are
        standardised with its first batch's mean/std; a function's are used as returned."""
        texts = [decode_response(self.tok, r) for r in responses]
        completions = [t if isinstance(b["prompt"], str) else [{"role": "assistant", "content": t}]
                       for b, t in zip(batch, texts)]
        columns = {k: [b["extra"][k] for b in batch] for k in batch[0]["extra"]}
        total, stats, j = torch.zeros(len(batch), device=ids.device), {}, 0
        for term in self.terms:
            if term.model is not None:
                s = self.reward_models[j].eval()(ids, mask).float()
                if self.score_norm[j, 1] == 0:
                    self.score_norm[j] = torch.stack([s.mean(), s.std() + 1e-6])
                s, j = (s - self.score_norm[j, 0]) / self.score_norm[j, 1], j + 1
            else:
                s = call_reward(term, [b["prompt"] for b in batch], completions, columns).to(ids.device)
            stats[f"reward_{term.name}"] = s.mean()
            total = total + term.weight * s
        return total, stats

    @torch.no_grad()
    def rollout(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        cfg, tok, device = self.cfg, self.tok, self.score_norm.device
        prompts = [b["ids"] for b in batch]
        self.policy.eval(), self.ref.eval()
        with full_weights(self.policy):
            responses = sample(self.policy.gpt, prompts, cfg.max_new, stop_ids(tok), tok.pad_id, cfg.temperature)
        ids, mask = (t.to(device) for t in pad_right([p + r for p, r in zip(prompts, responses)], tok.pad_id))  # (B, T)
        resp, _ = pad_right([[0] * len(p) + [1] * len(r) for p, r in zip(prompts, responses)], 0)
        act = resp[:, 1:].bool().to(device)  # (B, T-1) actions = response tokens
        logits, values = self.policy(ids)
        logp, ref_logp = self._logprobs(logits, ids), self._logprobs(self.ref(ids), ids)
        score, stats = self.score(batch, responses, ids, mask)
        rewards = -cfg.kl_coef * (logp - ref_logp) * act  # (B, T-1)
        last = act.long().cumsum(1).argmax(1)  # index of each row's final action
        rewards[torch.arange(len(ids), device=device), last] += score
        values = values[:, :-1] * act
        adv, returns = gae(rewards, values, act, cfg.gamma, cfg.lam)
        stats.update(reward=score.mean(), kl=((logp - ref_logp) * act).sum(1).mean(),
                     response_len=act.sum(1).float().mean())
        return {"ids": ids, "act": act, "logp": logp, "values": values, "adv": whiten(adv, act),
                "returns": returns, "stats": stats}

    def _logprobs(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Token log-probs (B, T-1) of the sampling distribution, softmax(logits / temperature)."""
        return token_logprobs(logits / self.cfg.temperature, ids)

    def update(self, batch: dict) -> dict[str, float]:
        cfg = self.cfg

        def loss(idx):
            ids, act = batch["ids"][idx], batch["act"][idx]
            width = response_width(act)
            logits, values = self.policy(ids[:, :width])
            logp = self._logprobs(logits, ids[:, :width])
            act, cut = act[:, : width - 1], slice(0, width - 1)
            pg, st = ppo_policy_loss(logp, batch["logp"][idx, cut], batch["adv"][idx, cut], act, cfg.clip)
            vf = ppo_value_loss(values[:, :-1], batch["values"][idx, cut], batch["returns"][idx, cut], act, cfg.vf_clip)
            return pg + cfg.vf_coef * vf, {"pg_loss": pg, "vf_loss": vf, **st}

        return minibatch_steps(self, len(batch["ids"]), loss)

    def training_step(self, batch: list[dict], _):
        roll = self.rollout(batch)
        stats = {**{k: float(v) for k, v in roll["stats"].items()}, **self.update(roll)}
        self.history.append({"step": len(self.history), **stats})
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, batch_size=len(batch))
        self.log_dict({"reward": stats["reward"], "kl": stats["kl"]}, prog_bar=True, logger=False, batch_size=len(batch))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ppo_history"] = self.history

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.history = list(checkpoint.get("ppo_history", []))

    @torch.no_grad()
    def evaluate(self, rows: list[dict], batch_size: int = 128) -> dict[str, float]:
        """Greedy completions of held-out prompts scored by every reward term: each term's mean and the total."""
        sums: dict[str, float] = {}
        self.policy.eval()
        for i in range(0, len(rows), batch_size):
            batch = rows[i:i + batch_size]
            responses = sample(self.policy.gpt, [b["ids"] for b in batch], self.cfg.max_new, stop_ids(self.tok),
                               self.tok.pad_id, 0.0)
            ids, mask = (t.to(self.score_norm.device) for t in pad_right(
                [b["ids"] + r for b, r in zip(batch, responses)], self.tok.pad_id))
            total, stats = self.score(batch, responses, ids, mask)
            for k, v in {"reward": total.mean(), **{k.removeprefix("reward_"): v for k, v in stats.items()}}.items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(batch)
        return {k: v / max(len(rows), 1) for k, v in sums.items()}
