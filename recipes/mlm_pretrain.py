"""Pretrain a BERT by masked-token prediction (default: bert-mini on the Shakespeare plays, ~10 CPU-minutes).

    python recipes/mlm_pretrain.py                                  # the default: 320 steps of bert-mini
    python recipes/mlm_pretrain.py --data notes/ tokenizer=char     # your text (formats as gpt_pretrain.py)
    python recipes/mlm_pretrain.py --max-steps 100 n_layer=2 batch_size=16 mask_prob=0.2

BERT's MLM (mmfm.losses.mlm.mlm_mask: 15% of positions; 80% [MASK], 10% random, 10% kept) on windows of
max_len tokens behind the [CLS] token (the tokenizer's end-of-text token). The text is read, split by
documents (val_fraction) and tokenized (tokenizer=bpe by default, bpe_vocab 4096) by mmfm.data.text.
Writes <out>/model/ (with its tokenizer) and <out>/metrics.json: held-out masked-token accuracy next to the
unigram guess (always the training split's most frequent token) on the same masked positions.
"""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

import mmfm
from mmfm.config import ConfigError
from mmfm.data.stepstream import StepStream
from mmfm.train import Timer, finish, parse_args, recipe_parser, setup_logging
from mmfm.train.mlm import MLMBatches, MLMConfig, MLMTask, add_corpus_flags, fit, held_out_batches, \
    masked_accuracy, prepare, summary, unigram_counts

log = logging.getLogger("recipes.mlm_pretrain")
ROOT = Path(__file__).resolve().parents[1]


def build_model(args, tok, overrides: dict):
    """The BERT, its vocabulary the tokenizer's plus [MASK] (a saved --preset folder keeps its own)."""
    if not Path(args.preset).is_dir():
        overrides = {"vocab_size": tok.vocab_size + 1, "mask_id": tok.vocab_size, "pad_id": tok.pad_id, **overrides}
    model = mmfm.build_model(args.preset, **overrides)
    if model.config.family != "bert":
        raise ValueError(f"--preset {args.preset}: a {model.config.family} model; mlm_pretrain trains BERT")
    if model.config.mask_id < tok.vocab_size:
        raise ConfigError(f"mask_id={model.config.mask_id} is a token of the tokenizer (vocab {tok.vocab_size}): "
                          "[MASK] must be an id of its own (the default: the tokenizer's vocab_size)")
    model.tokenizer = tok
    return model


def main(argv=None) -> dict:
    setup_logging()
    parser = recipe_parser(__doc__.splitlines()[0], preset="bert-mini", max_steps=320, out="runs/mlm")
    add_corpus_flags(parser)
    args = parse_args(parser, argv)
    timer = Timer()
    train, overrides, plan = prepare(args, MLMConfig, ROOT)
    tok = plan.tokenizer
    L.seed_everything(args.seed, workers=True)
    model = build_model(args, tok, overrides)
    c = model.config
    folder = plan.write(min_tokens=c.max_len + 1)
    batches = MLMBatches(folder / "train.bin", c.max_len, train.batch_size, c.mask_id, c.vocab_size, tok.eos_id,
                         train.mask_prob, args.seed)
    stream = StepStream(batches)
    val = held_out_batches(folder / "val.bin", c.max_len - 1, train.val_batches * train.batch_size, batches.mask)
    log.info("model %s: %.2fM parameters; data %s", args.preset, model.num_params() / 1e6, folder)
    task = MLMTask(model, train, args.max_steps)
    trainer = fit(args, task, stream, val, f"{args.preset} MLM on {plan.info['path']}")
    fit_s = timer.elapsed
    final = held_out_batches(folder / "val.bin", c.max_len - 1, train.final_val_windows, batches.mask)
    scores = masked_accuracy(task, final, unigram_counts(folder / "train.bin", c.vocab_size))
    metrics = summary(args, trainer, model, train, plan, scores, train.batch_size * c.max_len, fit_s)
    log.info("held-out masked-token accuracy %.4f (unigram guess %.4f) on %d tokens", scores["masked_accuracy"],
             scores["unigram_accuracy"], scores["scored_tokens"])
    return finish(args, model, metrics, timer)


if __name__ == "__main__":
    main()
