"""Stage 3 of alignment: RLHF with PPO on Lightning. Policy (+ value head) from SFT, a frozen SFT reference for
the per-token KL penalty, a reward from reward-model folders and/or reward functions, GAE, clipped objective,
KV-cache rollouts.

    python recipes/ppo.py --init runs/align/sft/model reward=runs/align/rm/model --out runs/align/ppo   # built-in
    python recipes/ppo.py --init runs/my_sft/model --data prompts.jsonl reward=my_rewards:exact_match
    python recipes/ppo.py ... reward=runs/align/rm/model,mmfm.align.rewards:exact_match reward_weights=[1,1]

--data is JSONL with `prompt` (a string or messages) and any extra columns; each reward function is called as
f(prompts, completions, **columns) -> list[float] (TRL's reward_funcs), found on the working directory or
PYTHONPATH. Without --data the built-in task writes its prompts (with an `answer` column) to <out>/data and reads
them back; its default reward is runs/align/rm/model, with mmfm.align.rewards:exact_match at weight 0 (logged as
the rollout accuracy, not rewarded). Rollouts sample at `temperature` (0.7), and the ratios, the KL penalty and the
per-step KL use that same tempered distribution. --max-steps counts PPO steps (rollout + updates); checkpoints
every --ckpt-every PPO steps. Writes <out>/model (the policy GPT), <out>/history.json, <out>/ppo.png, <out>/loss.png
and <out>/metrics.json: held-out prompts' (--val-data or a split of --data) mean reward of greedy completions per
term and the KL to the reference; for the built-in task also held-out accuracy greedy and at temperature 1.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import mmfm
from mmfm.align.builtin import write_prompts
from mmfm.align.formats import add_data_args, read_prompts
from mmfm.align.heads import PolicyWithValue
from mmfm.align.ppo import PPOConfig, PPOTask, Prompts
from mmfm.align.report import plot_ppo
from mmfm.align.rewards import load_rewards
from mmfm.align.rollout import evaluate, kl_to_reference
from mmfm.align.run import builtin_only, fit, splits, train_loader
from mmfm.align.splits import heldout_problems
from mmfm.train import LossHistory, Timer, finish, make_trainer, parse_args, recipe_parser, setup_logging, split_overrides

log = logging.getLogger("ppo")
BUILTIN_REWARD = ("runs/align/rm/model,mmfm.align.rewards:exact_match", [1.0, 0.0])


@dataclass
class PPORun:
    reward: str | None = None  # reward-model folder(s) and/or module:function, comma-separated
    reward_weights: list | None = None  # one per reward term (default all 1)
    n_pool: int = 4096  # built-in task: training prompts
    n_eval: int = 400  # built-in task: held-out problems
    val_fraction: float = 0.1  # --data without --val-data: the share of prompts held out


def main(argv=None):
    setup_logging()
    parser = recipe_parser(__doc__.splitlines()[0], "", 120, "runs/align/ppo")
    parser.add_argument("--init", default="runs/align/sft/model", help="SFT model folder (policy and reference)")
    add_data_args(parser, "RL prompts")
    args = parse_args(parser, argv)
    routed = split_overrides(args.overrides, ppo=PPOConfig(), run=PPORun())
    cfg, run = PPOConfig(**routed["ppo"]), PPORun(**routed["run"])
    builtin_only(args, ("n_pool", "n_eval"))
    if args.data and run.reward is None:
        raise mmfm.config.ConfigError("reward= is required with --data: a reward-model folder or module:function")
    reward, weights = (run.reward, run.reward_weights) if run.reward else BUILTIN_REWARD
    rewards = load_rewards(reward, weights)
    torch.manual_seed(args.seed)
    timer = Timer()
    policy = PolicyWithValue(mmfm.build_model(args.init))
    reference, tok = mmfm.build_model(args.init), policy.gpt.tokenizer
    train, heldout, sizes = splits(args, lambda folder: write_prompts(folder, run.n_pool, run.n_eval, args.seed), read_prompts, run.val_fraction)
    train, heldout = (Prompts(tok, d, policy.config.block_size) for d in (train, heldout))
    task = PPOTask(policy, reference, rewards, tok, cfg)
    steps = argparse.Namespace(**{**vars(args), "max_steps": args.max_steps * cfg.updates_per_step(), "ckpt_every": None})
    hist = LossHistory(args.out, prefixes=("train/reward", "train/kl"), title="align: PPO")
    trainer = make_trainer(steps, callbacks=[hist], limit_val_batches=0, log_every_n_steps=cfg.updates_per_step(),
                           ckpt_every=(args.ckpt_every or 20) * cfg.updates_per_step())
    fit_start = time.perf_counter()
    if not fit(trainer, task, args, train_loader(train, cfg.prompts_per_step, list, args.seed)):
        return {}
    train_s = time.perf_counter() - fit_start
    policy = task.policy  # under FSDP the gathered copy (mmfm.align.run.fit)
    out = Path(args.out)
    (out / "history.json").write_text(json.dumps(task.history))
    plot_ppo(task.history, out / "ppo.png")
    metrics = {"last_step": task.history[-1] if task.history else {}, "steps": len(task.history), "data": sizes,
               "train_s": round(train_s, 2)}
    if len(heldout):
        metrics["heldout_reward"] = task.evaluate(heldout.rows)
        metrics["kl_to_reference"] = kl_to_reference(policy.gpt, reference, tok, [r["ids"] for r in heldout.rows])
    if not args.data:
        problems = heldout_problems("eval", run.n_eval)
        metrics.update(heldout=evaluate(policy.gpt, tok, problems),
                       heldout_t1=evaluate(policy.gpt, tok, problems, temperature=1.0),
                       kl_to_sft=kl_to_reference(policy.gpt, reference, tok, problems))
    return finish(args, policy.gpt, metrics, timer)


if __name__ == "__main__":
    main()
