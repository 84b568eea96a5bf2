"""Stage 2a of alignment: a reward model (GPT backbone + scalar head) trained with Bradley-Terry on
preference pairs; reports held-out pairwise accuracy.

    python recipes/reward_model.py --sft runs/align/sft/model --out runs/align/rm         # the built-in task
    python recipes/reward_model.py --sft runs/my_sft/model --data prefs.jsonl --out runs/my_rm    # your pairs
    python recipes/reward_model.py --sft runs/align_smoke/sft/model --max-steps 5 n_prompts=32 \
        n_heldout_prompts=16 --out runs/align_smoke/rm                                              # smoke

--data is JSONL with prompt/chosen/rejected, plain or conversational (or TRL's implicit-prompt shape); the
held-out pairs are --val-data or a deterministic split of --data (val_fraction, by --seed). Without --data the
built-in task samples the SFT model `samples` times per prompt at temperature 1, ranks the distinct samples with
the rule labeller (mmfm.align.task.prefer: correct beats wrong, an answer beats a question, concise beats
rambling), keeps at most `pairs_per_prompt` strict pairs per prompt (mmfm.align.builtin.PairConfig), writes them
to <out>/data/preferences.jsonl and preferences_heldout.jsonl (DPO can take the same files) and reads them back;
held-out pairs come from held-out prompts, and their accuracy is also broken down by the labeller's reason.
The backbone starts from the SFT weights. Writes <out>/model (GPT folder + head.safetensors), <out>/loss.png and
<out>/metrics.json.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

import mmfm
from mmfm.align.builtin import PairConfig, problem_of, write_preferences
from mmfm.align.data import Pairs, pair_collate
from mmfm.align.formats import Example, add_data_args, read_preferences
from mmfm.align.heads import RewardModel
from mmfm.align.rollout import rows_scores
from mmfm.align.run import builtin_only, fit, splits, train_loader
from mmfm.align.task import pair_kind
from mmfm.align.tasks import RewardTask
from mmfm.config import opt
from mmfm.train import LossHistory, Timer, finish, make_trainer, parse_args, recipe_parser, setup_logging, split_overrides
from mmfm.train.budget import time_limit

log = logging.getLogger("reward_model")


@dataclass
class RMConfig(PairConfig):  # the pair fields shape the built-in task's pairs only
    val_fraction: float = 0.1  # --data without --val-data: the share held out
    batch_size: int = opt(32, lo=1)
    lr: float = opt(2e-4, gt=0.0)
    weight_decay: float = opt(0.0, lo=0.0)
    warmup: int = opt(20, lo=0)
    val_every: int = opt(50, lo=1)
    max_minutes: float = opt(0.0, lo=0.0)  # >0: also stop training after this many minutes (rank 0's clock), whichever first


def pairwise_accuracy(rm, tok, examples: list[Example], pairs: Pairs) -> dict[str, float]:
    """Fraction of pairs where r(chosen) > r(rejected), overall and (built-in task) by the labeller's reason."""
    wins = rows_scores(rm, [r[0][0] for r in pairs.rows], tok.pad_id) > rows_scores(
        rm, [r[1][0] for r in pairs.rows], tok.pad_id)
    out = {"acc": float(wins.float().mean()), "n": len(examples)}
    by_kind = defaultdict(list)
    for e, w in zip(examples, wins.tolist()):
        problem = problem_of(e.extra)
        if problem is not None:
            by_kind[pair_kind(problem, e.chosen[-1].content, e.rejected[-1].content)].append(w)
    out.update({f"acc_{k}": sum(v) / len(v) for k, v in by_kind.items()})
    out.update({f"n_{k}": len(v) for k, v in by_kind.items()})
    return out


def main(argv=None):
    setup_logging()
    parser = recipe_parser(__doc__.splitlines()[0], "", 600, "runs/align/rm")
    parser.add_argument("--sft", default="runs/align/sft/model", help="SFT model folder (backbone init; the "
                        "built-in task also samples its pairs from it)")
    add_data_args(parser, "preference pairs")
    args = parse_args(parser, argv)
    cfg = RMConfig(**split_overrides(args.overrides, train=RMConfig())["train"])
    builtin_only(args, ("n_prompts", "n_heldout_prompts", "samples", "pairs_per_prompt"))
    torch.manual_seed(args.seed)
    timer = Timer()
    sft = mmfm.build_model(args.sft)
    tok = sft.tokenizer
    train, heldout, sizes = splits(args, lambda folder: write_preferences(folder, sft, tok, cfg, args.seed), read_preferences, cfg.val_fraction)
    train_pairs, val_pairs = Pairs(tok, train, sft.config.block_size), Pairs(tok, heldout, sft.config.block_size)
    rm = RewardModel(sft)
    collate = pair_collate(tok.pad_id)
    loader = train_loader(train_pairs, cfg.batch_size, collate, args.seed)
    val = DataLoader(val_pairs, batch_size=128, collate_fn=collate) if len(val_pairs) else None
    log.info("%d train pairs, %d held-out pairs", len(train_pairs), len(val_pairs))
    hist = LossHistory(args.out, prefixes=("train/loss", "val/loss", "train/acc", "val/acc"), title="align: reward model")
    trainer = make_trainer(args, callbacks=[hist], val_every=min(cfg.val_every, len(loader)) if val else None,
                           log_every_n_steps=10, num_sanity_val_steps=0, limit_val_batches=None if val else 0,
                           **time_limit(cfg.max_minutes))
    task = RewardTask(rm, cfg.lr, cfg.weight_decay, cfg.warmup, args.max_steps)
    if not fit(trainer, task, args, loader, val):
        return {}
    rm = task.rm  # under FSDP the gathered copy (mmfm.align.run.fit)
    metrics = {"train": pairwise_accuracy(rm, tok, train, train_pairs), "steps": trainer.global_step, "data": sizes}
    if len(val_pairs):
        metrics["heldout"] = pairwise_accuracy(rm, tok, heldout, val_pairs)
    return finish(args, rm, metrics, timer)


if __name__ == "__main__":
    main()
