"""Stage 1 of alignment: supervised fine-tuning on chats, with the loss on assistant turns only.

    python recipes/sft.py --init runs/align/base/model --out runs/align/sft            # the built-in task
    python recipes/sft.py --init runs/align/base/model --data chats.jsonl --out runs/my_sft   # your chats
    python recipes/sft.py --init runs/align_smoke/base/model --max-steps 5 n_train=32 --out runs/align_smoke/sft

--data is JSONL in TRL's shapes (docs/data.md): {"messages": [...]} or {"prompt": ..., "completion": ...},
plain or conversational; --val-data, or a deterministic split of --data (val_fraction, by --seed), gives the
held-out loss. Without --data the built-in task writes its small labelled set (each prompt with its clean worked
answer) to <out>/data/sft.jsonl and reads it back, and also reports held-out task accuracy, greedy and at T=1.
lora_rank > 0 trains LoRA adapters (peft, on the attention and MLP layers; lora_alpha) instead of every weight and
merges them into the saved model, which loads like any other. Writes <out>/model, <out>/loss.png and
<out>/metrics.json.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

import mmfm
from mmfm.adapt.lora import lora_or_full, merge_lora
from mmfm.align.builtin import write_sft
from mmfm.align.data import Chats, chat_collate
from mmfm.align.formats import add_data_args, read_chat
from mmfm.align.rollout import chat_nll, evaluate
from mmfm.align.run import builtin_only, fit, splits, train_loader
from mmfm.align.splits import heldout_problems
from mmfm.align.tasks import LMTask
from mmfm.config import opt
from mmfm.train import LossHistory, Timer, finish, make_trainer, parse_args, recipe_parser, setup_logging, split_overrides
from mmfm.train.budget import time_limit

log = logging.getLogger("sft")


@dataclass
class SFTConfig:
    n_train: int = 256  # built-in task: labelled chats
    n_eval: int = 400  # built-in task: held-out problems (accuracy, and the held-out loss)
    val_fraction: float = 0.1  # --data without --val-data: the share held out
    batch_size: int = opt(32, lo=1)
    lr: float = opt(1e-3, gt=0.0)
    weight_decay: float = opt(0.0, lo=0.0)
    warmup: int = opt(10, lo=0)
    max_minutes: float = opt(0.0, lo=0.0)  # >0: also stop training after this many minutes (rank 0's clock), whichever first
    lora_rank: int = opt(0, lo=0)  # > 0: train LoRA adapters (peft) on the attention and MLP layers, merged at the end
    lora_alpha: float = opt(16.0, gt=0.0)


def main(argv=None):
    setup_logging()
    parser = recipe_parser(__doc__.splitlines()[0], "", 30, "runs/align/sft")
    parser.add_argument("--init", default="runs/align/base/model", help="pretrained model folder")
    add_data_args(parser, "chats or prompt-completion records")
    args = parse_args(parser, argv)
    cfg = SFTConfig(**split_overrides(args.overrides, train=SFTConfig())["train"])
    builtin_only(args, ("n_train", "n_eval"))
    torch.manual_seed(args.seed)
    model = mmfm.build_model(args.init)
    tok = model.tokenizer
    train, val, sizes = splits(args, lambda folder: write_sft(folder, cfg.n_train, cfg.n_eval, args.seed), read_chat, cfg.val_fraction)
    train, val = (Chats(tok, d, model.config.block_size) for d in (train, val))
    task = LMTask(lora_or_full(model, cfg.lora_rank, cfg.lora_alpha, "lora_alpha" in args.overrides), cfg.lr,
                  cfg.weight_decay, cfg.warmup, args.max_steps)
    hist = LossHistory(args.out, prefixes=("train/loss",), title="align: SFT")
    timer = Timer()
    trainer = make_trainer(args, callbacks=[hist], limit_val_batches=0, log_every_n_steps=5,
                           **time_limit(cfg.max_minutes))
    if not fit(trainer, task, args, train_loader(train, cfg.batch_size, chat_collate(tok.pad_id), args.seed)):
        return {}
    model = merge_lora(task.model)  # under FSDP the gathered copy (mmfm.align.run.fit); LoRA folded in
    metrics = {"train/loss": float(trainer.callback_metrics["train/loss"]), "steps": trainer.global_step, "data": sizes}
    if len(val):
        metrics["val/loss"] = chat_nll(model, val.rows, tok.pad_id)  # per assistant token
    if not args.data:
        heldout = heldout_problems("eval", cfg.n_eval)
        metrics.update(heldout=evaluate(model, tok, heldout), heldout_t1=evaluate(model, tok, heldout, temperature=1.0))
    return finish(args, model, metrics, timer)


if __name__ == "__main__":
    main()
