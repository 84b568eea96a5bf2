"""Pretrain a small CLIP on image-text webdataset shards, then evaluate zero-shot, retrieval and a linear probe.

    python recipes/clip_pretrain.py                     # builds data/clip if missing, trains clip-mini on CPU
    python recipes/clip_pretrain.py --data 'shards/train-{000000..000099}.tar' --test-data 'shards/test-*.tar'
    python recipes/clip_pretrain.py --devices 2 --strategy ddp --max-steps 200 batch_size=128

Writes <out>/metrics.json, <out>/model/ (config, weights, tokenizer), <out>/loss.png and <out>/clip_summary.png.
"""
from __future__ import annotations

import logging
import string
import sys
from pathlib import Path

import torch

import mmfm
from mmfm.checkpoint import load_pretrained
from mmfm.data.imagetext import build_label_shards, default_shards_ready, read_classes
from mmfm.data.webdata import (Collate, image_text_dataset, image_text_loader, image_transform, read_captions,
                               shard_dir)
from mmfm.eval.clip_plots import plot_summary, retrieval_examples
from mmfm.eval.image_text import evaluate_clip, load_split
from mmfm.registry import read_config
from mmfm.tokenizers import ByteBPETokenizer, CharTokenizer, ClipTokenizer
from mmfm.train import LossHistory, Timer, finish, make_trainer, parse_args, recipe_parser, setup_logging
from mmfm.train import split_overrides
from mmfm.train.clip import ClipTask, ClipTrain

log = logging.getLogger("clip_pretrain")
DEFAULT_DATA = Path("data/clip")


def build_tokenizer(cfg, train_urls: str):
    """clip: open_clip's BPE; char: printable ASCII; bpe: a byte-level BPE trained on the training captions
    and the class prompts (lossless on any text), at most cfg.vocab_size tokens."""
    if cfg.tokenizer == "clip":
        return ClipTokenizer(cfg.context_length)
    if cfg.tokenizer == "char":
        return CharTokenizer(string.printable)
    classes = read_classes(shard_dir(train_urls))
    prompts = [p.format(c) for meta in classes.values() for p in meta["prompts"] for c in meta["classnames"]]
    corpus = list(dict.fromkeys(read_captions(train_urls, limit=200_000) + prompts))  # unique, in order
    return ByteBPETokenizer.train(corpus, vocab_size=cfg.vocab_size,
                                  min_frequency=1)


def build_clip(preset: str, overrides: dict, train_urls: str):
    """A preset (or a saved folder) with its tokenizer; vocab and end-of-text id follow the tokenizer."""
    if (Path(preset) / "config.json").is_file():
        model = load_pretrained(preset, **overrides)
        if model.tokenizer is None:
            model.tokenizer = build_tokenizer(model.config, train_urls)
        return model
    cfg = mmfm.get_config(preset, **overrides)
    tok = build_tokenizer(cfg, train_urls)
    if cfg.tokenizer != "clip":
        cfg = cfg.replace(vocab_size=tok.vocab_size, eot_token_id=tok.eos_id)
    model = mmfm.build_model(preset, **{**overrides, **{k: getattr(cfg, k) for k in ("vocab_size", "eot_token_id")}})
    model.tokenizer = tok
    return model


def resolve_data(args) -> tuple[str, str]:
    """(train pattern, test pattern); with no --data, the default shards (built here if missing)."""
    if args.data is not None:
        test = args.test_data or str(shard_dir(args.data) / "test-*.tar")
        return args.data, test
    if not default_shards_ready(DEFAULT_DATA):
        timer = Timer()
        log.info("building the default shards under %s (MNIST-5k + animal silhouettes)", DEFAULT_DATA)
        build_label_shards(DEFAULT_DATA)
        log.info("shards built in %.1f s", timer.elapsed)
    return str(DEFAULT_DATA / "train-*.tar"), args.test_data or str(DEFAULT_DATA / "test-*.tar")


def main(argv=None) -> dict:
    setup_logging()
    timer = Timer()
    parser = recipe_parser(__doc__.split("\n")[0], "clip-mini", max_steps=4000, out="runs/clip")
    parser.add_argument("--data", default=None, help="training shard pattern (brace or glob); default: data/clip")
    parser.add_argument("--test-data", default=None, help="held-out shard pattern; default: test-*.tar beside --data")
    parser.add_argument("--no-probe", action="store_true", help="skip the linear probe on the training shards")
    args = parse_args(parser, argv)
    torch.manual_seed(args.seed)
    base = read_config(Path(args.preset)) if (Path(args.preset) / "config.json").is_file() else mmfm.get_config(args.preset)
    routed = split_overrides(args.overrides, model=base, train=ClipTrain())
    train = ClipTrain(**routed["train"])
    data_timer = Timer()
    train_urls, test_urls = resolve_data(args)
    model = build_clip(args.preset, routed["model"], train_urls)
    data_s = data_timer.elapsed  # shards (when built here) + tokenizer training

    collate = Collate(model.tokenizer, model.config.context_length)
    ds = image_text_dataset(train_urls, image_transform(model.config, train=True, augment=train.augment), collate,
                            train.batch_size, shuffle=train.shuffle, random_caption=train.random_caption,
                            seed=args.seed)
    task = ClipTask(model, train, args.max_steps)
    history = LossHistory(args.out, prefixes=("train/loss",), title=f"{args.preset} contrastive loss")
    trainer = make_trainer(args, callbacks=[history], limit_val_batches=0, num_sanity_val_steps=0,
                           max_time={"minutes": train.train_minutes}, use_distributed_sampler=False)
    fit_timer = Timer()
    trainer.fit(task, image_text_loader(ds, train.num_workers), ckpt_path=_ckpt(args))
    fit_s = fit_timer.elapsed
    if not trainer.is_global_zero:
        return {}
    eval_timer = Timer()
    metrics = evaluate_clip(model, test_urls, None if args.no_probe else train_urls)
    samples = task.samples_seen * trainer.world_size
    metrics.update({"train/loss": history.history["train/loss"][-1][1] if history.history.get("train/loss") else None,
                    "steps": trainer.global_step, "samples_seen": samples, "samples_per_s": round(samples / fit_s, 1),
                    "fit_s": round(fit_s, 1), "data_s": round(data_s, 1), "eval_s": round(eval_timer.elapsed, 1),
                    "skipped_samples": sum(task.skipped.values()), "params": model.num_params()})
    _summary_png(model, test_urls, history.history, Path(args.out) / "clip_summary.png")
    return finish(args, model, metrics, timer)


def _ckpt(args):
    from mmfm.train.recipe import checkpoint_to_resume

    return checkpoint_to_resume(args.resume)


def _summary_png(model, test_urls, history, path):
    classes = read_classes(shard_dir(test_urls))
    if not classes:
        return
    test = load_split(model, test_urls)
    examples = retrieval_examples(model, test["images"], test["labels"], test["sources"], classes)
    plot_summary(history, examples, path, model.config.image_mean, model.config.image_std,
                 f"{model.config.family} {model.num_params() / 1e6:.1f}M params")


if __name__ == "__main__":
    main(sys.argv[1:])
