"""Stage 2b of alignment: DPO (or IPO, hinge, robust DPO, ORPO) on preference pairs.

    python recipes/dpo.py --init runs/align/sft/model --data runs/align/rm/data/preferences.jsonl --out runs/align/dpo
    python recipes/dpo.py --init runs/my_sft/model --data prefs.jsonl --out runs/my_dpo          # your pairs
    python recipes/dpo.py ... nll_alpha=0 --out runs/align/dpo_plain     # plain DPO, no NLL term
    python recipes/dpo.py ... loss=ipo beta=0.5 --out runs/align/ipo
    python recipes/dpo.py ... loss=robust label_smoothing=0.1     # rDPO: 10% of the labels assumed flipped
    python recipes/dpo.py ... loss=orpo beta=0.1 --out runs/align/orpo   # reference-free: NLL + odds-ratio term

loss= picks the per-pair loss of mmfm.losses.preference_loss (dpo = sigmoid, ipo, hinge, robust; on log-probs
summed over the response) or orpo (per-token mean log-probs, no reference; its NLL term is nll_alpha's).

--data is JSONL with prompt/chosen/rejected, plain or conversational (or TRL's implicit-prompt shape); without
it the built-in task's pairs are sampled from the --init model as the reward-model recipe does (PairConfig) and
written to <out>/data. The policy and the frozen reference both start from --init; the reference's log-probs of
every chosen and rejected response are computed once before training and cached. By default the loss adds
`nll_alpha` x the per-token NLL of the chosen response (RPO; TRL's `rpo_alpha`): the chosen and rejected
answers share almost every token, and plain DPO raised their log-ratio margin by pushing both down. Writes
<out>/model, <out>/loss.png and <out>/metrics.json: the held-out pairs' implicit-reward accuracy (--val-data or a
split of --data), the KL to the reference on held-out prompts, and for the built-in task held-out task
accuracy greedy and at temperature 1 (when the records carry the task's columns a, op, b).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch

import mmfm
from mmfm.align.builtin import PairConfig, problem_of, write_preferences
from mmfm.align.chat import encode_turns
from mmfm.align.data import Pairs, pair_collate
from mmfm.align.formats import add_data_args, read_preferences
from mmfm.align.rollout import evaluate, kl_to_reference, rows_logprobs
from mmfm.align.run import builtin_only, fit, splits, train_loader
from mmfm.align.splits import heldout_problems
from mmfm.align.tasks import DPO_LOSSES, DPOTask
from mmfm.config import opt
from mmfm.train import LossHistory, Timer, finish, make_trainer, parse_args, recipe_parser, setup_logging, split_overrides
from mmfm.train.budget import time_limit

log = logging.getLogger("dpo")


@dataclass
class DPOConfig(PairConfig):  # the pair fields shape the built-in task's pairs only
    loss: str = opt("dpo", choices=DPO_LOSSES)  # dpo (= sigmoid), ipo, hinge, robust, orpo
    beta: float = opt(0.1, gt=0.0)
    label_smoothing: float = opt(0.0, lo=0.0, lt=0.5)  # loss=robust only: the assumed label-flip rate
    nll_alpha: float = opt(1.0, lo=0.0)  # RPO: + alpha * per-token NLL of the chosen response (0: plain DPO / IPO)
    val_fraction: float = 0.1  # --data without --val-data: the share held out
    batch_size: int = opt(32, lo=1)
    lr: float = opt(2e-5, gt=0.0)
    weight_decay: float = opt(0.0, lo=0.0)
    warmup: int = opt(10, lo=0)
    max_minutes: float = opt(0.0, lo=0.0)  # >0: also stop training after this many minutes (rank 0's clock), whichever first
    n_eval: int = 400  # built-in task's pairs (records with a, op, b): held-out problems for accuracy and the KL


def reference_logprobs(model, pairs: Pairs, pad: int) -> torch.Tensor:
    """log model(chosen), log model(rejected) of every pair -> (N, 2)."""
    return torch.stack([rows_logprobs(model, [r[k] for r in pairs.rows], pad) for k in (0, 1)], 1)


def heldout_metrics(policy, reference, tok, pairs: Pairs, prompts: list[list[int]]) -> dict:
    """Implicit-reward accuracy (the policy/reference log-ratio prefers chosen) on held-out pairs, and the KL."""
    ratio = reference_logprobs(policy, pairs, tok.pad_id) - reference_logprobs(reference, pairs, tok.pad_id)
    return {"reward_acc": float((ratio[:, 0] > ratio[:, 1]).float().mean()), "n": len(pairs),
            "kl_to_reference": kl_to_reference(policy, reference, tok, prompts)}


def main(argv=None):
    setup_logging()
    parser = recipe_parser(__doc__.splitlines()[0], "", 150, "runs/align/dpo")
    parser.add_argument("--init", default="runs/align/sft/model", help="SFT model folder (policy and reference)")
    add_data_args(parser, "preference pairs")
    args = parse_args(parser, argv)
    cfg = DPOConfig(**split_overrides(args.overrides, train=DPOConfig())["train"])
    builtin_only(args, ("n_prompts", "n_heldout_prompts", "samples", "pairs_per_prompt"))
    if "label_smoothing" in args.overrides and cfg.loss != "robust":
        raise mmfm.config.ConfigError(f"label_smoothing is the flip rate of loss=robust; loss={cfg.loss} ignores it")
    torch.manual_seed(args.seed)
    timer = Timer()
    policy = mmfm.build_model(args.init)
    tok, reference = policy.tokenizer, copy.deepcopy(policy).eval().requires_grad_(False)
    train, heldout, sizes = splits(args, lambda folder: write_preferences(folder, policy, tok, cfg, args.seed), read_preferences, cfg.val_fraction)
    task_pairs = all(problem_of(e.extra) for e in train)  # the built-in task's pairs (columns a, op, b)
    if "n_eval" in args.overrides and not task_pairs:
        raise mmfm.config.ConfigError("n_eval evaluates the built-in task; these pairs lack its columns a, op, b")
    pairs, val_pairs = Pairs(tok, train, policy.config.block_size), Pairs(tok, heldout, policy.config.block_size)
    ref_logps = torch.zeros(len(pairs), 2) if cfg.loss == "orpo" else reference_logprobs(reference, pairs, tok.pad_id)
    task = DPOTask(policy, ref_logps, cfg.beta, cfg.loss, cfg.lr, cfg.weight_decay, cfg.warmup, args.max_steps,
                   cfg.nll_alpha, cfg.label_smoothing)
    hist = LossHistory(args.out, prefixes=("train/loss", "train/reward_acc"), title=f"align: {cfg.loss.upper()}")
    trainer = make_trainer(args, callbacks=[hist], limit_val_batches=0, log_every_n_steps=5,
                           **time_limit(cfg.max_minutes))
    if not fit(trainer, task, args, train_loader(pairs, cfg.batch_size, pair_collate(tok.pad_id), args.seed)):
        return {}
    policy = task.policy  # under FSDP the gathered copy (mmfm.align.run.fit)
    reference.to(trainer.strategy.root_device)
    metrics = {"loss": cfg.loss, "beta": cfg.beta, "nll_alpha": cfg.nll_alpha, "lr": cfg.lr, "pairs": len(pairs),
               **({"label_smoothing": cfg.label_smoothing} if cfg.loss == "robust" else {}),
               "steps": trainer.global_step, "data": sizes}
    if len(val_pairs):
        prompts = [encode_turns(tok, e.turns, add_generation_prompt=True)[0] for e in heldout]
        metrics["heldout_pairs"] = heldout_metrics(policy, reference, tok, val_pairs, prompts)
    if task_pairs:
        problems = heldout_problems("eval", cfg.n_eval)
        metrics.update(heldout=evaluate(policy, tok, problems), heldout_t1=evaluate(policy, tok, problems, temperature=1.0),
                       kl_to_sft=kl_to_reference(policy, reference, tok, problems))
    return finish(args, policy, metrics, timer)


if __name__ == "__main__":
    main()
