"""Group-relative RL (GRPO and its variants, RLOO) as a LightningModule with manual optimization: each training
step samples `group` completions of each of `prompts_per_step` prompts (one batched KV-cache decode that drops
finished sequences, mmfm.align.sampling), scores them with the reward terms (reward functions and/or
reward-model folders, as PPO does), turns rewards into group-relative advantages (no value model) and takes
`epochs` passes of clipped importance-ratio minibatch steps (mmfm.losses.policy). Progress bar, checkpoints,
--resume and --devices come from the Trainer.

The importance ratios are taken against the log-probs of the distribution the tokens were actually sampled from
(softmax(filter(logits / temperature)), with top_k / top_p), returned by the sampler; the policy's log-probs use
the same transform. A KL penalty to a frozen reference is off by default (beta 0, as TRL's); with beta > 0 the
reference must be given. Sequences are right-padded prompt + response and every per-action tensor is (N, T-1),
aligned with `token_logprobs` (entry t scores token t+1), as in PPO.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import lightning as L
import torch
import torch.nn as nn

from ..adapt.lora import is_lora
from ..config import ConfigError, opt
from ..losses.policy import GROUP_LOSSES, SCALES, group_advantages, group_policy_loss, sampling_logprobs
from ..train.optim import build_optimizer
from .chat import pad_right, stop_ids
from .ppo import PPOTask, minibatch_steps, response_width
from .rewards import RewardTerm
from .sampling import sample_groups


@dataclass
class GRPOConfig:
    prompts_per_step: int = opt(16, lo=1)
    group: int = opt(8, lo=2)  # completions per prompt (TRL's num_generations)
    loss: str = opt("dapo", choices=GROUP_LOSSES)  # grpo, bnpo, dapo, dr_grpo, or rloo (leave-one-out baseline)
    scale_rewards: str = opt("default", choices=("default", *SCALES))  # default: none for dr_grpo/rloo, else group
    epsilon: float = opt(0.2, gt=0.0, lt=1.0)  # lower clip: ratio >= 1 - epsilon
    epsilon_high: float = opt(-1.0)  # upper clip: ratio <= 1 + epsilon_high; < 0: 0.28 for dapo (clip-higher), else epsilon
    beta: float = opt(0.0, lo=0.0)  # KL to the reference (0: no reference model needed)
    epochs: int = opt(1, lo=1)  # passes over each rollout batch (TRL's num_iterations)
    minibatch: int = opt(64, lo=1)  # completions per optimizer step
    lr: float = opt(2e-4, gt=0.0)
    temperature: float = opt(0.7, gt=0.0)  # rollouts sample softmax(logits / T) (as PPO's); the ratios use it too
    top_k: int = opt(0, lo=0)  # 0: no top-k filter
    top_p: float = opt(1.0, gt=0.0, hi=1.0)
    max_new: int = opt(64, lo=1)
    grad_clip: float = opt(1.0, lo=0.0)

    def updates_per_step(self) -> int:
        return self.epochs * math.ceil(self.prompts_per_step * self.group / self.minibatch)

    def scale(self) -> str:
        if self.scale_rewards != "default":
            return self.scale_rewards
        return "none" if self.loss in ("dr_grpo", "rloo") else "group"

    def eps_high(self) -> float:
        if self.epsilon_high >= 0:
            return self.epsilon_high
        return 0.28 if self.loss == "dapo" else self.epsilon


@contextmanager
def adapters_merged(model: nn.Module):
    """A LoRA (peft) policy with its adapters folded into the base weights for the duration (the fast one-token
    decoder reads the base weights directly); unmerged after. A plain model is used as it is."""
    if not is_lora(model):
        yield model
        return
    model.merge_adapter()
    try:
        yield model
    finally:
        model.unmerge_adapter()


class GRPOTask(L.LightningModule):
    """policy: a GPT, or a LoRA (peft) GPT (mmfm.adapt.lora.add_lora); reference: a frozen GPT (needed only when
    beta > 0); rewards: reward terms."""

    def __init__(self, policy: nn.Module, rewards: list[RewardTerm], tok, cfg: GRPOConfig,
                 reference: nn.Module | None = None):
        super().__init__()
        if cfg.beta > 0 and reference is None:
            raise ConfigError(f"beta={cfg.beta}: the KL penalty needs a reference model")
        self.automatic_optimization = False
        self.policy, self.ref, self.terms, self.tok, self.cfg = policy, reference, rewards, tok, cfg
        self.reward_models = nn.ModuleList([t.model for t in rewards if t.model is not None])
        for frozen in (self.ref, self.reward_models):
            if frozen is not None:
                frozen.eval().requires_grad_(False)
        self.register_buffer("score_norm", torch.zeros(len(self.reward_models), 2))  # as PPOTask's: checkpointed
        self.history: list[dict] = []
        self.generator = None  # the rollouts' torch.Generator, made on the training device at the first rollout

    # the same reward terms, reward-model standardisation and checkpointed history as PPO
    score = PPOTask.score
    on_save_checkpoint = PPOTask.on_save_checkpoint
    on_load_checkpoint = PPOTask.on_load_checkpoint

    def configure_optimizers(self):
        return build_optimizer(self.policy, self.cfg.lr, 0.0, betas=(0.9, 0.95), fused=False)

    def _logprobs(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        return sampling_logprobs(logits, ids, cfg.temperature, cfg.top_k or None, cfg.top_p)

    @torch.no_grad()
    def rollout(self, batch: list[dict]) -> dict:
        cfg, tok, device = self.cfg, self.tok, self.score_norm.device
        if self.generator is None or self.generator.device != device:
            self.generator = torch.Generator(device).manual_seed(int(torch.randint(0, 2**31, (1,))))
        prompts = [b["ids"] for b in batch]
        with adapters_merged(self.policy) as policy:
            out = sample_groups(policy, prompts, cfg.group, cfg.max_new, stop_ids(tok), tok.pad_id, cfg.temperature,
                                cfg.top_k or None, cfg.top_p, self.generator)
        rows = [b for b in batch for _ in range(cfg.group)]  # (N,) prompt by prompt
        seqs = [r["ids"] + y for r, y in zip(rows, out.responses)]
        ids, mask = (t.to(device) for t in pad_right(seqs, tok.pad_id))  # (N, T)
        act = torch.zeros(ids.shape[0], ids.shape[1] - 1, dtype=torch.bool, device=device)  # (N, T-1)
        old = torch.zeros(act.shape, device=device)
        for i, (r, y) in enumerate(zip(rows, out.responses)):  # action t scores token t+1
            act[i, len(r["ids"]) - 1:len(r["ids"]) - 1 + len(y)] = True
            old[i, len(r["ids"]) - 1:len(r["ids"]) - 1 + len(y)] = out.logprobs[i, :len(y)].to(device)
        score, stats = self.score(rows, out.responses, ids, mask)
        ref = None
        if self.ref is not None and cfg.beta > 0:
            ref = self._logprobs(self.ref(ids), ids)
            if cfg.loss == "rloo":  # RLOO: the KL penalty is part of the reward
                score = score - cfg.beta * ((old - ref) * act).sum(1)
        adv = group_advantages(score, cfg.group, "leave_one_out" if cfg.loss == "rloo" else "mean", cfg.scale())
        grouped = score.view(-1, cfg.group)
        stats.update(reward=score.mean(), reward_std=grouped.std(1).mean(),
                     frac_zero_std=(grouped.std(1) < 1e-6).float().mean(), response_len=act.sum(1).float().mean(),
                     rollout_tokens=torch.tensor(float(out.n_tokens)), rollout_s=torch.tensor(out.seconds),
                     rollout_tokens_per_s=torch.tensor(out.tokens_per_s),
                     rollout_row_fraction=torch.tensor(out.row_steps / max(len(rows) * cfg.max_new, 1)))
        return {"ids": ids, "act": act, "logp": old, "adv": adv, "ref": ref, "stats": stats}

    def update(self, roll: dict) -> dict[str, float]:
        cfg = self.cfg
        n_tokens = float(roll["act"].sum()) / math.ceil(len(roll["ids"]) / cfg.minibatch)  # DAPO: per optimizer step

        def loss(idx):
            act = roll["act"][idx]
            width = response_width(act)
            ids, act, cut = roll["ids"][idx, :width], act[:, :width - 1], slice(0, width - 1)
            logp = self._logprobs(self.policy(ids), ids)
            ref = roll["ref"][idx, cut] if roll["ref"] is not None and cfg.loss != "rloo" else None
            return group_policy_loss(cfg.loss, logp, roll["logp"][idx, cut], roll["adv"][idx], act, cfg.epsilon,
                                     cfg.eps_high(), ref, cfg.beta if ref is not None else 0.0, n_tokens, cfg.max_new)

        return minibatch_steps(self, len(roll["ids"]), loss)

    def training_step(self, batch: list[dict], _):
        roll = self.rollout(batch)
        stats = {**{k: float(v) for k, v in roll["stats"].items()}, **self.update(roll)}
        self.history.append({"step": len(self.history), **stats})
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, batch_size=len(batch))
        self.log_dict({"reward": stats["reward"]}, prog_bar=True, logger=False, batch_size=len(batch))
