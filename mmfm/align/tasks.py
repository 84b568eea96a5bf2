"""Thin LightningModules: next-token loss on masked tokens (pretraining and SFT), the reward model
(Bradley-Terry), and DPO / IPO with reference log-probs computed once and cached."""
from __future__ import annotations

import lightning as L
import torch

from ..losses.preference import (PAIR_LOSSES, bradley_terry_loss, masked_mean, orpo_loss, preference_loss,
                                 token_logprobs)
from ..train.optim import build_optimizer, build_scheduler
from ..train.strategies import ShardedTask


def adamw_warmup_cosine(module, lr: float, weight_decay: float, warmup: int, max_steps: int) -> dict:
    """AdamW (decay on matrices only) with linear warmup and a cosine to 0.1 x lr at max_steps: the shared builder."""
    opt = build_optimizer(module, lr, weight_decay, betas=(0.9, 0.95))
    return {"optimizer": opt, "lr_scheduler": build_scheduler(opt, warmup, max_steps, min_ratio=0.1)}


class OptimMixin:
    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.hparams_["lr"], self.hparams_["weight_decay"], self.hparams_["warmup"],
                                   self.hparams_["max_steps"])


class LMTask(OptimMixin, ShardedTask, L.LightningModule):
    """-mean log p(token) over tokens where batch["loss_mask"] is set: all tokens when pretraining,
    response tokens for SFT."""

    def __init__(self, model, lr=1e-3, weight_decay=0.1, warmup=50, max_steps=1000):
        super().__init__()
        self.model, self.hparams_ = model, dict(lr=lr, weight_decay=weight_decay, warmup=warmup, max_steps=max_steps)

    def training_step(self, batch, _):
        ids = batch["ids"]  # right-padded (B, T); causal attention never lets real tokens see the pads
        loss = -masked_mean(token_logprobs(self.model(ids), ids), batch["loss_mask"][:, 1:])
        self.log("train/loss", loss, prog_bar=True)
        return loss


class RewardTask(OptimMixin, ShardedTask, L.LightningModule):
    """Bradley-Terry on (chosen, rejected) pairs; logs pairwise accuracy, train and held-out."""

    def __init__(self, reward_model, lr=3e-4, weight_decay=0.0, warmup=20, max_steps=500):
        super().__init__()
        self.rm, self.hparams_ = reward_model, dict(lr=lr, weight_decay=weight_decay, warmup=warmup, max_steps=max_steps)

    def _step(self, batch, split):
        c, r = batch["chosen"], batch["rejected"]
        loss, acc = bradley_terry_loss(self.rm(c["ids"], c["mask"]), self.rm(r["ids"], r["mask"]))
        self.log(f"{split}/loss", loss, prog_bar=True)
        self.log(f"{split}/acc", acc, prog_bar=True)
        return loss

    def training_step(self, batch, _):
        return self._step(batch, "train")

    def validation_step(self, batch, _):
        self._step(batch, "val")


DPO_LOSSES = ("dpo", *PAIR_LOSSES, "orpo")  # "dpo" is "sigmoid"


class DPOTask(OptimMixin, ShardedTask, L.LightningModule):
    """A direct preference loss on pairs (mmfm.losses.preference_loss: dpo/sigmoid, ipo, hinge, robust; or the
    reference-free orpo on per-token mean log-probs); `ref_logps` (N, 2) holds log ref(chosen), log ref(rejected)
    per pair index (unused by orpo). `nll_alpha` > 0 adds alpha * the per-token NLL of the chosen response (RPO,
    Pang et al. 2024; TRL's `rpo_alpha`; ORPO's own NLL term at alpha 1), which keeps the likelihood of preferred
    answers from falling with the rejected ones."""

    def __init__(self, policy, ref_logps: torch.Tensor, beta=0.1, loss="dpo", lr=1e-4, weight_decay=0.0,
                 warmup=10, max_steps=200, nll_alpha=0.0, label_smoothing=0.0):
        super().__init__()
        if loss not in DPO_LOSSES:
            raise ValueError(f"loss={loss!r}: expected one of {', '.join(DPO_LOSSES)}")
        self.policy, self.beta, self.loss_type = policy, beta, {"dpo": "sigmoid"}.get(loss, loss)
        self.nll_alpha, self.label_smoothing = nll_alpha, label_smoothing
        self.register_buffer("ref_logps", ref_logps, persistent=False)
        self.hparams_ = dict(lr=lr, weight_decay=weight_decay, warmup=warmup, max_steps=max_steps)

    def training_step(self, batch, _):
        c, r = batch["chosen"], batch["rejected"]
        tok_c = token_logprobs(self.policy(c["ids"]), c["ids"])  # (B, T-1)
        n_c, n_r = c["loss_mask"][:, 1:].sum(-1).clamp(min=1), r["loss_mask"][:, 1:].sum(-1).clamp(min=1)
        pi_c = (tok_c * c["loss_mask"][:, 1:]).sum(-1)
        pi_r = (token_logprobs(self.policy(r["ids"]), r["ids"]) * r["loss_mask"][:, 1:]).sum(-1)
        if self.loss_type == "orpo":
            ref = torch.zeros(len(pi_c), 2, device=pi_c.device)
            loss = orpo_loss(pi_c / n_c, pi_r / n_r, self.beta).mean()
            acc = (pi_c / n_c > pi_r / n_r).float().mean()
        else:
            ref = self.ref_logps[batch["index"]]  # (B, 2)
            loss = preference_loss(self.loss_type, pi_c, pi_r, ref[:, 0], ref[:, 1], self.beta,
                                   self.label_smoothing).mean()
            acc = ((pi_c - ref[:, 0]) > (pi_r - ref[:, 1])).float().mean()
        if self.nll_alpha:
            nll = -masked_mean(tok_c, c["loss_mask"][:, 1:])
            self.log("train/nll_chosen", nll)
            loss = loss + self.nll_alpha * nll
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/reward_acc", acc, prog_bar=True)
        self.log("train/margin", ((pi_c - ref[:, 0]) - (pi_r - ref[:, 1])).mean())
        return loss
