"""Stage 3 of alignment: RLHF with PPO. Policy (+ value head) from SFT, a frozen SFT reference for the
per-token KL penalty, reward from the reward model, GAE, clipped objective, KV-cache rollouts.

    python recipes/ppo.py --init runs/align/sft/model --reward runs/align/rm/model --out runs/align/ppo
    python recipes/ppo.py ... rule_weight=1.0     # reward = RM + 1.0 * [answer correct]

Rollouts sample at `temperature` (0.7), and the ratios, the KL penalty and the per-step KL use that same
tempered distribution softmax(logits / T) for policy and reference. Every step logs the mean
(standardised) reward and the KL to the reference (sum over response tokens of log pi_T - log ref_T,
averaged over the rollouts); the final `kl_to_sft` is measured at T=1 on held-out prompts. Writes <out>/model (the policy GPT), <out>/history.json,
<out>/ppo.png and <out>/metrics.json (held-out accuracy greedy and at temperature 1, KL to the SFT model).
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch

import mmfm
from mmfm.align.heads import PolicyWithValue, RewardModel
from mmfm.align.ppo import PPO, PPOConfig
from mmfm.align.report import plot_ppo
from mmfm.align.rollout import evaluate, kl_to_reference
from mmfm.align.splits import heldout_problems, train_problems
from mmfm.train import Timer, finish, parse_args, recipe_parser, setup_logging, split_overrides

log = logging.getLogger("ppo")


@dataclass
class PPORun:
    n_pool: int = 4096  # training prompts to draw rollouts from
    n_eval: int = 400


def main(argv=None):
    setup_logging()
    parser = recipe_parser(__doc__.splitlines()[0], "", 120, "runs/align/ppo")
    parser.add_argument("--init", default="runs/align/sft/model", help="SFT model folder (policy and reference)")
    parser.add_argument("--reward", default="runs/align/rm/model", help="reward model folder")
    args = parse_args(parser, argv)
    routed = split_overrides(args.overrides, ppo=PPOConfig(), run=PPORun())
    cfg, run = PPOConfig(**routed["ppo"]), PPORun(**routed["run"])
    torch.manual_seed(args.seed)
    timer = Timer()
    policy = PolicyWithValue(mmfm.build_model(args.init))
    reference, tok = mmfm.build_model(args.init), policy.gpt.tokenizer
    ppo = PPO(policy, reference, RewardModel.from_pretrained(args.reward), tok, cfg, args.seed)
    pool, rng, history = train_problems("ppo", run.n_pool), random.Random(args.seed), []
    for step in range(args.max_steps):
        stats = ppo.step(rng.sample(pool, cfg.prompts_per_step))
        history.append({"step": step, **stats})
        log.info("step %d: %s", step, " ".join(f"{k}={v:.3f}" for k, v in stats.items()))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps(history))
    plot_ppo(history, out / "ppo.png")
    heldout = heldout_problems("eval", run.n_eval)
    metrics = {"heldout": evaluate(policy.gpt, tok, heldout), "heldout_t1": evaluate(policy.gpt, tok, heldout, temperature=1.0),
               "kl_to_sft": kl_to_reference(policy.gpt, reference, tok, heldout),
               "last_step": history[-1] if history else {}, "steps": args.max_steps}
    return finish(args, policy.gpt, metrics, timer)


if __name__ == "__main__":
    main()
