"""Stage 1 of alignment: supervised fine-tuning on a small labelled set of chats (loss on the response only).

    python recipes/sft.py --init runs/align/base/model --out runs/align/sft
    python recipes/sft.py --init runs/align_smoke/base/model --max-steps 5 n_train=32 --out runs/align_smoke/sft

Each example is <|user|>prompt<|end|><|assistant|>worked answer<|end|> from the training split; the
loss mask covers the answer and its closing <|end|>. Kept short and small on purpose (a labelled set
is expensive), so there is room for preference learning. Writes <out>/model and <out>/metrics.json
(held-out accuracy, greedy and sampled at temperature 1).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

import mmfm
from mmfm.align.data import chat_collate, sft_data
from mmfm.align.rollout import evaluate
from mmfm.align.splits import heldout_problems, train_problems
from mmfm.align.tasks import LMTask
from mmfm.config import opt
from mmfm.train import LossHistory, Timer, finish, make_trainer, parse_args, recipe_parser, setup_logging, split_overrides

log = logging.getLogger("sft")


@dataclass
class SFTConfig:
    n_train: int = 256  # labelled chats
    batch_size: int = opt(32, lo=1)
    lr: float = opt(1e-3, gt=0.0)
    weight_decay: float = opt(0.0, lo=0.0)
    warmup: int = opt(10, lo=0)
    n_eval: int = 400


def main(argv=None):
    setup_logging()
    parser = recipe_parser(__doc__.splitlines()[0], "", 30, "runs/align/sft")
    parser.add_argument("--init", default="runs/align/base/model", help="pretrained model folder")
    args = parse_args(parser, argv)
    routed = split_overrides(args.overrides, train=SFTConfig())
    train = SFTConfig(**routed["train"])
    torch.manual_seed(args.seed)
    model = mmfm.build_model(args.init)
    tok = model.tokenizer
    data = sft_data(tok, train_problems("sft", train.n_train), args.seed)
    loader = DataLoader(data, batch_size=train.batch_size, shuffle=True, drop_last=True,
                        collate_fn=chat_collate(tok.pad_id), generator=torch.Generator().manual_seed(args.seed))
    task = LMTask(model, train.lr, train.weight_decay, train.warmup, args.max_steps)
    hist = LossHistory(args.out, prefixes=("train/loss",), title="align: SFT")
    timer = Timer()
    trainer = make_trainer(args, callbacks=[hist], limit_val_batches=0, log_every_n_steps=5)
    trainer.fit(task, loader)
    heldout = heldout_problems("eval", train.n_eval)
    metrics = {"heldout": evaluate(model, tok, heldout), "heldout_t1": evaluate(model, tok, heldout, temperature=1.0),
               "train/loss": float(trainer.callback_metrics["train/loss"]), "steps": trainer.global_step}
    return finish(args, model, metrics, timer)


if __name__ == "__main__":
    main()
