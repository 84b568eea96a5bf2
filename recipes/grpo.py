"""Group-relative RL from verifiable rewards (GRPO, DAPO, Dr. GRPO, RLOO): no value model, no reward model needed.

    python recipes/grpo.py                                          # built-in arithmetic task from runs/align/sft/model
    python recipes/grpo.py loss=grpo --out runs/align/grpo_plain    # or dapo (default), bnpo, dr_grpo, rloo
    python recipes/grpo.py --init runs/my_sft/model --data prompts.jsonl reward=my_rewards:correct,my_rewards:fmt \
        reward_weights=[1,0.2] --out runs/my_grpo

Each step samples `group` (8) completions of `prompts_per_step` (16) prompts at `temperature` (top_k / top_p
optional) in one batched KV-cache decode that drops finished sequences, scores them with the reward terms, and
uses reward minus the group mean (divided by the group's std for grpo/bnpo/dapo: scale_rewards=) as every
token's advantage; rloo uses the mean of the other G-1 completions instead. Then `epochs` passes of clipped
importance-ratio minibatch steps, the ratios taken against the log-probs of the distribution actually sampled.
loss= names the aggregation as TRL does (docs/grpo.md); dapo clips higher (epsilon_high 0.28). beta > 0 adds a
KL penalty to the frozen --init model (default 0: none, as TRL's). --max-steps counts RL steps.

--data is JSONL with `prompt` (a string or messages) and any extra columns; each reward function is called as
f(prompts, completions, **columns) -> list[float] (TRL's reward_funcs), found on the working directory or
PYTHONPATH; a reward-model folder may be one of the terms. Without --data the built-in task writes its prompts
(with an `answer` column) to <out>/data and rewards the exact answer (mmfm.align.rewards:exact_match; the format,
format_reward, is logged at weight 0). The default --init runs/align/sft/model is made first, by align_all.sh's
first two stages, when it is missing. max_train_s= also stops RL after that many seconds (equal-time comparisons).
lora_rank=8 trains LoRA adapters (peft) instead of every weight; they are merged into the saved model.

Writes <out>/model, <out>/history.json, <out>/loss.png (reward and loss per step) and <out>/metrics.json: the
rollout speed (rollout_tokens_per_s) and wall_s; with --data the held-out prompts' (--val-data or a split) mean
reward per term of greedy completions; for the built-in task confirm/greedy and confirm/sampled (accuracy on the
808 confirmation problems of mmfm.align.confirm, greedy and at T=1), format_rate (greedy completions ending in
`Answer: N` there), mean_len, kl_to_sft, and the tuning split's accuracy (heldout: the 400 eval problems).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

import mmfm
from mmfm.adapt.lora import lora_or_full, merge_lora
from mmfm.align.builtin import write_prompts
from mmfm.align.chat import pad_right, stop_ids
from mmfm.align.compare import confirm_metrics
from mmfm.align.formats import add_data_args, read_prompts
from mmfm.align.grpo import GRPOConfig, GRPOTask
from mmfm.align.ppo import Prompts
from mmfm.align.rewards import load_rewards
from mmfm.align.run import builtin_only, fit, splits, train_loader
from mmfm.align.sampling import sample_groups
from mmfm.config import ConfigError, opt
from mmfm.train import LossHistory, Timer, finish, make_trainer, parse_args, recipe_parser, setup_logging, split_overrides

log = logging.getLogger("grpo")
DEFAULT_INIT = "runs/align/sft/model"
BUILTIN_REWARD = ("mmfm.align.rewards:exact_match,mmfm.align.rewards:format_reward", [1.0, 0.0])


@dataclass
class GRPORun:
    reward: str | None = None  # reward functions (module:function) and/or reward-model folders, comma-separated
    reward_weights: list | None = None  # one per reward term (default all 1)
    n_pool: int = 4096  # built-in task: training prompts
    n_eval: int = 400  # built-in task: held-out problems (the tuning split)
    val_fraction: float = 0.1  # --data without --val-data: the share of prompts held out
    max_train_s: float = opt(0.0, lo=0.0)  # > 0: also stop RL after this many seconds (equal-time comparisons)
    lora_rank: int = opt(0, lo=0)  # > 0: train LoRA adapters (peft) on the attention and MLP layers, merged at the end
    lora_alpha: float = opt(16.0, gt=0.0)


def ensure_sft(args) -> None:
    """Make the default SFT model with align_all.sh's first two stages (base pretraining, SFT) when it is missing;
    any other missing --init is an error."""
    if (Path(args.init) / "config.json").is_file():
        return
    if args.init != DEFAULT_INIT or "LOCAL_RANK" in os.environ:
        raise FileNotFoundError(f"--init {args.init}: no saved model there (config.json missing)")
    log.info("no SFT model at %s: making it with recipes/align_all.sh's first stages (align_pretrain.py, sft.py)",
             args.init)
    root = Path(DEFAULT_INIT).parent.parent
    for name, argv in (("align_pretrain", ["--out", str(root / "base")]),
                       ("sft", ["--init", str(root / "base" / "model"), "--out", str(root / "sft")])):
        spec = importlib.util.spec_from_file_location(f"{name}_recipe", Path(__file__).with_name(f"{name}.py"))
        module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main(argv)


@torch.no_grad()
def heldout_reward(task: GRPOTask, rows: list[dict], batch_size: int = 128) -> dict[str, float]:
    """Greedy completions of held-out prompts scored by every reward term: each term's mean and the total."""
    sums: dict[str, float] = {}
    tok, device = task.tok, task.score_norm.device
    for i in range(0, len(rows), batch_size):
        batch = rows[i:i + batch_size]
        out = sample_groups(task.policy, [b["ids"] for b in batch], 1, task.cfg.max_new, stop_ids(tok), tok.pad_id,
                            temperature=0.0)
        ids, mask = (t.to(device) for t in pad_right([b["ids"] + r for b, r in zip(batch, out.responses)], tok.pad_id))
        total, stats = task.score(batch, out.responses, ids, mask)
        for k, v in {"reward": total.mean(), **{k.removeprefix("reward_"): v for k, v in stats.items()}}.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(batch)
    return {k: v / max(len(rows), 1) for k, v in sums.items()}


def main(argv=None):
    setup_logging()
    parser = recipe_parser(__doc__.splitlines()[0], "", 100, "runs/align/grpo")
    parser.add_argument("--init", default=DEFAULT_INIT, help="SFT model folder (policy, and reference for the KL)")
    add_data_args(parser, "RL prompts")
    args = parse_args(parser, argv)
    routed = split_overrides(args.overrides, grpo=GRPOConfig(), run=GRPORun())
    cfg, run = GRPOConfig(**routed["grpo"]), GRPORun(**routed["run"])
    builtin_only(args, ("n_pool", "n_eval"))
    if args.data and run.reward is None:
        raise ConfigError("reward= is required with --data: module:function (or a reward-model folder), comma-separated")
    if run.reward_weights is not None and run.reward is None:
        raise ConfigError("reward_weights= weighs the terms of reward=; give reward= too")
    ensure_sft(args)
    rewards = load_rewards(*((run.reward, run.reward_weights) if run.reward else BUILTIN_REWARD))
    torch.manual_seed(args.seed)
    timer = Timer()
    policy = mmfm.build_model(args.init)
    reference, tok = mmfm.build_model(args.init).eval().requires_grad_(False), policy.tokenizer
    train, heldout, sizes = splits(args, lambda folder: write_prompts(folder, run.n_pool, run.n_eval, args.seed),
                                   read_prompts, run.val_fraction)
    train, heldout = (Prompts(tok, d, policy.config.block_size) for d in (train, heldout))
    trained = lora_or_full(policy, run.lora_rank, run.lora_alpha, "lora_alpha" in args.overrides)
    task = GRPOTask(trained, rewards, tok, cfg, reference if cfg.beta > 0 else None)
    steps = argparse.Namespace(**{**vars(args), "max_steps": args.max_steps * cfg.updates_per_step(), "ckpt_every": None})
    hist = LossHistory(args.out, prefixes=("train/reward", "train/loss"), title=f"align: {cfg.loss.upper()}")
    budget = {"max_time": timedelta(seconds=run.max_train_s)} if run.max_train_s > 0 else {}
    trainer = make_trainer(steps, callbacks=[hist], limit_val_batches=0, log_every_n_steps=cfg.updates_per_step(),
                           ckpt_every=(args.ckpt_every or 20) * cfg.updates_per_step(), **budget)
    fit_start = time.perf_counter()
    if not fit(trainer, task, args, train_loader(train, cfg.prompts_per_step, list, args.seed)):
        return {}
    train_s = time.perf_counter() - fit_start
    reference.to(trainer.strategy.root_device)
    policy = task.policy = merge_lora(task.policy)  # a plain GPT again: the saved folder loads like any model
    out, history = Path(args.out), task.history
    (out / "history.json").write_text(json.dumps(history))
    metrics = {"loss": cfg.loss, "scale_rewards": cfg.scale(), "epsilon_high": cfg.eps_high(), "steps": len(history),
               "data": sizes, "last_step": history[-1] if history else {}, "train_s": round(train_s, 2),
               "rollout_tokens_per_s": sum(h["rollout_tokens"] for h in history) / max(sum(h["rollout_s"] for h in history), 1e-9)}
    if args.data and len(heldout):
        metrics["heldout_reward"] = heldout_reward(task, heldout.rows)
    if not args.data:  # its held-out prompts are the 400 tuning problems: scored as task accuracy
        metrics.update(confirm_metrics(policy, reference, tok, run.n_eval))
    return finish(args, policy, metrics, timer)


if __name__ == "__main__":
    main()
