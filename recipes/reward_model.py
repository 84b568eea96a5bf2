"""Stage 2a of alignment: a reward model (GPT backbone + scalar head) trained with Bradley-Terry on
preference pairs; reports held-out pairwise accuracy.

    python recipes/reward_model.py --sft runs/align/sft/model --pairs runs/align/pairs.json --out runs/align/rm
    python recipes/reward_model.py --sft runs/align_smoke/sft/model --pairs runs/align_smoke/pairs.json \
        --max-steps 5 n_prompts=32 n_heldout_prompts=16 --out runs/align_smoke/rm                    # smoke

The pairs (made once, reused by DPO) come from sampling the SFT model `samples` times per prompt at
temperature 1 and ranking the distinct samples with the rule labeller (mmfm.align.task.prefer): correct
beats wrong, an answer beats a question, concise beats rambling; at most `pairs_per_prompt` strict pairs
are kept per prompt (mmfm.align.data.PairConfig). Held-out pairs come from held-out prompts.
The reward model's backbone starts from the SFT weights. Writes <out>/model (GPT folder +
head.safetensors) and <out>/metrics.json.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

import mmfm
from mmfm.align.data import PairConfig, Pairs, pair_collate, preference_pairs, problem_of
from mmfm.align.heads import RewardModel
from mmfm.align.rollout import reward_scores
from mmfm.align.task import pair_kind
from mmfm.align.tasks import RewardTask
from mmfm.train import LossHistory, Timer, finish, make_trainer, parse_args, recipe_parser, setup_logging, split_overrides

log = logging.getLogger("reward_model")


@dataclass
class RMConfig(PairConfig):
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup: int = 20
    val_every: int = 50


def pairwise_accuracy(rm, tok, pairs: list[dict]) -> dict[str, float]:
    """Fraction of pairs where r(chosen) > r(rejected), overall and by the labeller's reason."""
    prompts = [q["prompt"] for q in pairs]
    wins = reward_scores(rm, tok, prompts, [q["chosen"] for q in pairs]) > reward_scores(
        rm, tok, prompts, [q["rejected"] for q in pairs])
    by_kind = defaultdict(list)
    for q, w in zip(pairs, wins.tolist()):
        by_kind[pair_kind(problem_of(q), q["chosen"], q["rejected"])].append(w)
    out = {"acc": float(wins.float().mean()), "n": len(pairs)}
    out.update({f"acc_{k}": sum(v) / len(v) for k, v in by_kind.items()})
    out.update({f"n_{k}": len(v) for k, v in by_kind.items()})
    return out


def main(argv=None):
    setup_logging()
    parser = recipe_parser(__doc__.splitlines()[0], "", 600, "runs/align/rm")
    parser.add_argument("--sft", default="runs/align/sft/model", help="SFT model folder (samples + RM init)")
    parser.add_argument("--pairs", default="runs/align/pairs.json", help="preference pairs (made if missing)")
    args = parse_args(parser, argv)
    cfg = RMConfig(**split_overrides(args.overrides, train=RMConfig())["train"])
    torch.manual_seed(args.seed)
    timer = Timer()
    sft = mmfm.build_model(args.sft)
    tok = sft.tokenizer
    pairs = preference_pairs(args.pairs, sft, tok, cfg, args.seed)
    rm = RewardModel(sft)
    collate = pair_collate(tok.pad_id)
    train = DataLoader(Pairs(tok, pairs["train"]), batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                       collate_fn=collate, generator=torch.Generator().manual_seed(args.seed))
    val = DataLoader(Pairs(tok, pairs["heldout"]), batch_size=128, collate_fn=collate)
    log.info("%d train pairs, %d held-out pairs", len(pairs["train"]), len(pairs["heldout"]))
    hist = LossHistory(args.out, prefixes=("train/loss", "val/loss", "train/acc", "val/acc"), title="align: reward model")
    trainer = make_trainer(args, callbacks=[hist], val_every=min(cfg.val_every, len(train)), log_every_n_steps=10,
                           num_sanity_val_steps=0)
    trainer.fit(RewardTask(rm, cfg.lr, cfg.weight_decay, cfg.warmup, args.max_steps), train, val)
    metrics = {"heldout": pairwise_accuracy(rm, tok, pairs["heldout"]), "train": pairwise_accuracy(rm, tok, pairs["train"]),
               "steps": args.max_steps}
    return finish(args, rm, metrics, timer)


if __name__ == "__main__":
    main()
