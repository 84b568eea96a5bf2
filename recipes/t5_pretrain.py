"""Pretrain a T5 by span corruption (default: t5-mini on the Shakespeare plays, ~10 CPU-minutes).

    python recipes/t5_pretrain.py                                   # the default: 240 steps of t5-mini
    python recipes/t5_pretrain.py --data notes/ tokenizer=char      # your text (formats as gpt_pretrain.py)
    python recipes/t5_pretrain.py --max-steps 100 seq_len=64 noise_density=0.25

T5's span corruption (mmfm.losses.mlm.span_corrupt: 15% of the tokens in spans of mean length 3, each span
replaced by a sentinel in the input; the target is sentinel, span, sentinel, span, ..., end-of-text) on
random windows of seq_len tokens. Sentinels are the top n_sentinels ids of the model's vocabulary, above the
tokenizer's; pad (also the decoder's start token) and end-of-text are the tokenizer's. The text is read, split
and tokenized (tokenizer=bpe by default) by mmfm.data.text. Writes <out>/model/ (with its tokenizer) and
<out>/metrics.json: held-out teacher-forced accuracy on the corrupted spans' tokens (sentinels and
end-of-text left out) next to the unigram guess (the training split's most frequent token) on the same tokens.
"""
from __future__ import annotations

import logging
from pathlib import Path

import lightning as L

import mmfm
from mmfm.config import ConfigError
from mmfm.data.stepstream import StepStream
from mmfm.train import Timer, finish, parse_args, recipe_parser, setup_logging
from mmfm.train.mlm import SpanBatches, SpanConfig, SpanTask, add_corpus_flags, fit, held_out_batches, \
    masked_accuracy, prepare, summary, unigram_counts

log = logging.getLogger("recipes.t5_pretrain")
ROOT = Path(__file__).resolve().parents[1]


def build_model(args, tok, train: SpanConfig, overrides: dict):
    """The T5, its vocabulary the tokenizer's plus the sentinels (a saved --preset folder keeps its own)."""
    if not Path(args.preset).is_dir():
        overrides = {"vocab_size": tok.vocab_size + train.n_sentinels, "pad_id": tok.pad_id, "eos_id": tok.eos_id,
                     **overrides}
    model = mmfm.build_model(args.preset, **overrides)
    if model.config.family != "t5":
        raise ValueError(f"--preset {args.preset}: a {model.config.family} model; t5_pretrain trains T5")
    if model.config.vocab_size - train.n_sentinels < tok.vocab_size:
        raise ConfigError(f"vocab_size={model.config.vocab_size} leaves no room for n_sentinels="
                          f"{train.n_sentinels} above the tokenizer's {tok.vocab_size} tokens")
    spans = round(train.seq_len * train.noise_density / train.mean_span)
    if spans > train.n_sentinels:
        raise ConfigError(f"seq_len={train.seq_len} x noise_density={train.noise_density} / mean_span="
                          f"{train.mean_span} makes about {spans} spans, more than n_sentinels={train.n_sentinels}")
    model.tokenizer = tok
    return model


def main(argv=None) -> dict:
    setup_logging()
    parser = recipe_parser(__doc__.splitlines()[0], preset="t5-mini", max_steps=240, out="runs/t5")
    add_corpus_flags(parser)
    args = parse_args(parser, argv)
    timer = Timer()
    train, overrides, plan = prepare(args, SpanConfig, ROOT)
    tok = plan.tokenizer
    L.seed_everything(args.seed, workers=True)
    model = build_model(args, tok, train, overrides)
    c = model.config
    folder = plan.write(min_tokens=train.seq_len + 1)
    sentinel = c.vocab_size - 1
    batches = SpanBatches(folder / "train.bin", train, sentinel, c.eos_id, c.pad_id, args.seed)
    stream = StepStream(batches)
    val = held_out_batches(folder / "val.bin", train.seq_len, train.val_batches * train.batch_size, batches.corrupt)
    log.info("model %s: %.2fM parameters; data %s", args.preset, model.num_params() / 1e6, folder)
    task = SpanTask(model, train, args.max_steps)
    trainer = fit(args, task, stream, val, f"{args.preset} span corruption on {plan.info['path']}")
    fit_s = timer.elapsed
    final = held_out_batches(folder / "val.bin", train.seq_len, train.final_val_windows, batches.corrupt)
    skip = {c.eos_id, *range(sentinel - train.n_sentinels + 1, sentinel + 1)}
    scores = masked_accuracy(task, final, unigram_counts(folder / "train.bin", c.vocab_size), skip)
    metrics = summary(args, trainer, model, train, plan, scores, train.batch_size * train.seq_len, fit_s)
    log.info("held-out span-token accuracy %.4f (unigram guess %.4f) on %d tokens", scores["masked_accuracy"],
             scores["unigram_accuracy"], scores["scored_tokens"])
    return finish(args, model, metrics, timer)


if __name__ == "__main__":
    main()
