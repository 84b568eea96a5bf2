"""Stage 2b of alignment: DPO (or IPO) on the same preference pairs as the reward model.

    python recipes/dpo.py --init runs/align/sft/model --pairs runs/align/pairs.json --out runs/align/dpo
    python recipes/dpo.py ... nll_alpha=0 --out runs/align/dpo_plain     # plain DPO, no NLL term
    python recipes/dpo.py ... loss=ipo beta=0.5 --out runs/align/ipo

The policy and the frozen reference both start from the SFT model; the reference's log-probs of every
chosen and rejected response are computed once before training and cached. By default the loss adds
`nll_alpha` x the per-token NLL of the chosen response (RPO; TRL's `rpo_alpha`): the chosen and rejected
answers share almost every token, and plain DPO raised their log-ratio margin by pushing both down. Writes <out>/model and
<out>/metrics.json (held-out accuracy greedy and at temperature 1, and the KL to the SFT model).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

import mmfm
from mmfm.align.data import PairConfig, Pairs, pair_collate, preference_pairs
from mmfm.align.rollout import evaluate, kl_to_reference, response_logprobs
from mmfm.align.splits import heldout_problems
from mmfm.align.tasks import DPOTask
from mmfm.train import LossHistory, Timer, finish, make_trainer, parse_args, recipe_parser, setup_logging, split_overrides

log = logging.getLogger("dpo")


@dataclass
class DPOConfig(PairConfig):  # the pair fields only matter if the pairs file must be made here
    loss: str = "dpo"  # or "ipo"
    beta: float = 0.1
    nll_alpha: float = 1.0  # RPO: + alpha * per-token NLL of the chosen response (0: plain DPO / IPO)
    batch_size: int = 32
    lr: float = 2e-5
    weight_decay: float = 0.0
    warmup: int = 10
    n_eval: int = 400


def main(argv=None):
    setup_logging()
    parser = recipe_parser(__doc__.splitlines()[0], "", 150, "runs/align/dpo")
    parser.add_argument("--init", default="runs/align/sft/model", help="SFT model folder (policy and reference)")
    parser.add_argument("--pairs", default="runs/align/pairs.json", help="preference pairs (made if missing)")
    args = parse_args(parser, argv)
    cfg = DPOConfig(**split_overrides(args.overrides, train=DPOConfig())["train"])
    torch.manual_seed(args.seed)
    timer = Timer()
    policy = mmfm.build_model(args.init)
    tok, reference = policy.tokenizer, copy.deepcopy(policy).eval().requires_grad_(False)
    pairs = preference_pairs(args.pairs, policy, tok, cfg, args.seed)["train"]
    prompts = [q["prompt"] for q in pairs]
    ref_logps = torch.stack([response_logprobs(reference, tok, prompts, [q[k] for q in pairs])
                             for k in ("chosen", "rejected")], 1)  # (N, 2), computed once
    loader = DataLoader(Pairs(tok, pairs), batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                        collate_fn=pair_collate(tok.pad_id), generator=torch.Generator().manual_seed(args.seed))
    task = DPOTask(policy, ref_logps, cfg.beta, cfg.loss, cfg.lr, cfg.weight_decay, cfg.warmup, args.max_steps,
                   cfg.nll_alpha)
    hist = LossHistory(args.out, prefixes=("train/loss", "train/reward_acc"), title=f"align: {cfg.loss.upper()}")
    make_trainer(args, callbacks=[hist], limit_val_batches=0, log_every_n_steps=5).fit(task, loader)
    heldout = heldout_problems("eval", cfg.n_eval)
    metrics = {"heldout": evaluate(policy, tok, heldout), "heldout_t1": evaluate(policy, tok, heldout, temperature=1.0),
               "kl_to_sft": kl_to_reference(policy, reference, tok, heldout), "loss": cfg.loss, "beta": cfg.beta,
               "nll_alpha": cfg.nll_alpha, "lr": cfg.lr,
               "pairs": len(pairs), "steps": args.max_steps}
    return finish(args, policy, metrics, timer)


if __name__ == "__main__":
    main()
