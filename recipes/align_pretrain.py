"""Stage 0 of alignment: pretrain a small char-level GPT (next-token) on noisy arithmetic web text.

    python recipes/align_pretrain.py --out runs/align/base
    python recipes/align_pretrain.py --max-steps 50 n_items=2000 --out runs/align_smoke/base   # smoke

The corpus (mmfm.align.task.corpus) is Q:/A: worked examples in plain text, no chat tokens, from the
training split only; `bug_rate` of the writers forget carries / subtract smaller-from-larger, some
ramble, some answer with a question. Writes <out>/model (with its tokenizer) and <out>/metrics.json
(held-out accuracy of the base model prompted with the chat template).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

import mmfm
from mmfm.align.chat import build_tokenizer
from mmfm.align.data import Windows, chat_collate
from mmfm.align.rollout import evaluate
from mmfm.align.run import fit
from mmfm.align.splits import heldout_problems
from mmfm.align.task import corpus
from mmfm.align.tasks import LMTask
from mmfm.config import opt
from mmfm.data.stepstream import resumable_loader
from mmfm.registry import read_config
from mmfm.train import LossHistory, Timer, finish, make_trainer, parse_args, recipe_parser, setup_logging, split_overrides
from mmfm.train.budget import time_limit

log = logging.getLogger("align_pretrain")
DEFAULT_PRESET = "gpt-test"
SMALL_CHAR = dict(n_layer=4, n_head=4, n_embd=128, block_size=256, pos="rope", mlp_ratio=3.0)


@dataclass
class PretrainConfig:
    n_items: int = 150000  # worked examples in the corpus
    bug_rate: float = 0.7
    ramble: float = 0.1
    question: float = 0.1
    block: int = 128
    batch_size: int = opt(32, lo=1)
    lr: float = opt(3e-3, gt=0.0)
    weight_decay: float = opt(0.1, lo=0.0)
    warmup: int = opt(100, lo=0)
    n_eval: int = 400
    max_minutes: float = opt(0.0, lo=0.0)  # >0: also stop training after this many minutes (rank 0's clock), whichever first


def main(argv=None):
    setup_logging()
    args = parse_args(recipe_parser(__doc__.splitlines()[0], DEFAULT_PRESET, 2500, "runs/align/base"), argv)
    cfg = read_config(Path(args.preset)) if Path(args.preset).is_dir() else mmfm.get_config(args.preset)
    routed = split_overrides(args.overrides, model=cfg, train=PretrainConfig())
    train = PretrainConfig(**routed["train"])
    torch.manual_seed(args.seed)
    tok = build_tokenizer()
    defaults = SMALL_CHAR if args.preset == DEFAULT_PRESET else {}
    model = mmfm.build_model(args.preset, **{**defaults, "vocab_size": tok.vocab_size, **routed["model"]})
    model.tokenizer = tok
    data = Windows(tok, corpus(train.n_items, args.seed, train.bug_rate, train.ramble, train.question), train.block)
    log.info("%d params; %d windows of %d tokens", model.num_params(), len(data), train.block)
    loader = resumable_loader(data, train.batch_size, args.seed, collate_fn=chat_collate(tok.pad_id))
    task = LMTask(model, train.lr, train.weight_decay, train.warmup, args.max_steps)
    hist = LossHistory(args.out, prefixes=("train/loss",), title="align: pretraining")
    timer = Timer()
    trainer = make_trainer(args, callbacks=[hist], limit_val_batches=0, **time_limit(train.max_minutes))
    if not fit(trainer, task, args, loader):
        return {}
    model = task.model  # under FSDP the gathered copy (mmfm.align.run.fit)
    heldout = heldout_problems("eval", train.n_eval)
    metrics = {"heldout": evaluate(model, tok, heldout), "heldout_qa_format": evaluate(model, tok, heldout, style="qa"),
               "train/loss": float(trainer.callback_metrics["train/loss"]), "steps": trainer.global_step}
    return finish(args, model, metrics, timer)


if __name__ == "__main__":
    main()
