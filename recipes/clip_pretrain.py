"""Pretrain a small CLIP on image-text pairs, then evaluate zero-shot, retrieval and a linear probe.

    python recipes/clip_pretrain.py                     # builds data/clip if missing, trains clip-mini on CPU
    python recipes/clip_pretrain.py --data pairs.csv    # open_clip CSV (filepath,title); 20% held out by --seed
    python recipes/clip_pretrain.py --data captioned_images/ --test-fraction 0.1   # image + same-named .txt
    python recipes/clip_pretrain.py --data 'shards/train-{000000..000099}.tar' --test-data 'shards/test-*.tar'
    python recipes/clip_pretrain.py --devices 2 --strategy ddp --max-steps 200 batch_size=128
    python recipes/clip_pretrain.py loss=siglip --out runs/siglip   # SigLIP's sigmoid loss (logit bias -10, scale 10)
    python recipes/clip_pretrain.py loss=coca --out runs/coca       # CoCa: + a caption decoder (decoder_layers=text_layers)

Writes <out>/metrics.json, <out>/model/ (config, weights, tokenizer), <out>/loss.png and <out>/clip_summary.png.
"""
from __future__ import annotations

import logging
import math
import string
import sys
from pathlib import Path

import torch

import mmfm
from mmfm.checkpoint import load_pretrained
from mmfm.data.imagetext import build_label_shards, default_shards_ready
from mmfm.data.pairs import CsvKeys, PairSet, detect_pairs, resolve_pairs, train_loader
from mmfm.data.webdata import Collate, image_transform, read_captions
from mmfm.eval.clip_plots import plot_summary, retrieval_examples
from mmfm.eval.image_text import classes_of, evaluate_clip, load_split
from mmfm.registry import read_config
from mmfm.tokenizers import ByteBPETokenizer, CharTokenizer, ClipTokenizer
from mmfm.train import LossHistory, Timer, finish, make_trainer, parse_args, recipe_parser, setup_logging
from mmfm.train import split_overrides
from mmfm.train.clip import ClipTask, ClipTrain
from mmfm.train.strategies import gathered

log = logging.getLogger("clip_pretrain")
DEFAULT_DATA = Path("data/clip")


def build_tokenizer(cfg, train):
    """clip: open_clip's BPE; char: printable ASCII; bpe: a byte-level BPE trained on the training captions
    and the class prompts (lossless on any text), at most cfg.vocab_size tokens."""
    if cfg.tokenizer == "clip":
        return ClipTokenizer(cfg.context_length)
    if cfg.tokenizer == "char":
        return CharTokenizer(string.printable)
    classes = classes_of(train)
    prompts = [p.format(c) for meta in classes.values() for p in meta["prompts"] for c in meta["classnames"]]
    captions = train.captions[:200_000] if isinstance(train, PairSet) else read_captions(train, limit=200_000)
    corpus = list(dict.fromkeys(captions + prompts))  # unique, in order
    return ByteBPETokenizer.train(corpus, vocab_size=cfg.vocab_size,
                                  min_frequency=1)


def build_clip(preset: str, overrides: dict, train):
    """A preset (or a saved folder) with its tokenizer; vocab and end-of-text id follow the tokenizer."""
    if (Path(preset) / "config.json").is_file():
        model = load_pretrained(preset, **overrides)
        if model.tokenizer is None:
            model.tokenizer = build_tokenizer(model.config, train)
        return model
    cfg = mmfm.get_config(preset, **overrides)
    tok = build_tokenizer(cfg, train)
    if cfg.tokenizer != "clip":
        cfg = cfg.replace(vocab_size=tok.vocab_size, eot_token_id=tok.eos_id)
    model = mmfm.build_model(preset, **{**overrides, **{k: getattr(cfg, k) for k in ("vocab_size", "eot_token_id")}})
    model.tokenizer = tok
    return model


def resolve_data(args) -> tuple:
    """(train, test, split sizes): shard patterns or PairSets (mmfm.data.pairs); every check runs here, before
    --out is written. With no --data, the default shards (built here if missing)."""
    keys = CsvKeys(args.csv_img_key, args.csv_caption_key, args.csv_separator)
    if args.data is not None:
        return resolve_pairs(args.data, args.test_data, keys, args.test_fraction, args.seed)
    if not default_shards_ready(DEFAULT_DATA):
        timer = Timer()
        log.info("building the default shards under %s (MNIST-5k + animal silhouettes)", DEFAULT_DATA)
        build_label_shards(DEFAULT_DATA)
        log.info("shards built in %.1f s", timer.elapsed)
    test = detect_pairs(args.test_data, keys, "--test-data") if args.test_data else str(DEFAULT_DATA / "test-*.tar")
    return str(DEFAULT_DATA / "train-*.tar"), test, {"format": "webdataset (built-in data/clip)"}


def add_data_flags(parser) -> None:
    parser.add_argument("--data", default=None, help="training pairs: open_clip CSV/TSV, webdataset shards (a .tar, "
                        "brace pattern, glob, '::'-joined, or a folder of *.tar), or a folder of images with "
                        "same-named .txt captions; default: data/clip (built if missing)")
    parser.add_argument("--test-data", default=None, help="held-out pairs (any format above); default: test-*.tar "
                        "beside shards, or a --test-fraction split of CSV/folder pairs by --seed")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out share of CSV/folder pairs")
    parser.add_argument("--csv-img-key", default="filepath", help="CSV column of image paths (open_clip's flag)")
    parser.add_argument("--csv-caption-key", default="title", help="CSV column of captions (open_clip's flag)")
    parser.add_argument("--csv-separator", default=None, help="CSV separator (default: tab for .tsv, ',' else)")


def main(argv=None) -> dict:
    setup_logging()
    timer = Timer()
    parser = recipe_parser(__doc__.split("\n")[0], "clip-mini", max_steps=4000, out="runs/clip")
    add_data_flags(parser)
    parser.add_argument("--no-probe", action="store_true", help="skip the linear probe on the training shards")
    args = parse_args(parser, argv)
    torch.manual_seed(args.seed)
    base = read_config(Path(args.preset)) if (Path(args.preset) / "config.json").is_file() else mmfm.get_config(args.preset)
    routed = split_overrides(args.overrides, model=base, train=ClipTrain())
    train = ClipTrain(**routed["train"])
    if train.loss == "siglip" and not (Path(args.preset) / "config.json").is_file():  # the paper's initial values
        routed["model"] = {"init_logit_scale": math.log(10), "init_logit_bias": -10.0, **routed["model"]}
    if train.loss == "coca" and not (Path(args.preset) / "config.json").is_file():  # open_clip's CoCa: as deep as
        routed["model"] = {"decoder_layers": routed["model"].get("text_layers", base.text_layers), **routed["model"]}
    data_timer = Timer()
    train_data, test_data, split = resolve_data(args)
    model = build_clip(args.preset, routed["model"], train_data)
    data_s = data_timer.elapsed  # shards (when built here) + tokenizer training

    collate = Collate(model.tokenizer, model.config.context_length)
    loader = train_loader(train_data, image_transform(model.config, train=True, augment=train.augment), collate,
                          train.batch_size, train.num_workers, shuffle=train.shuffle,
                          random_caption=train.random_caption, seed=args.seed, world=args.devices * args.num_nodes)
    task = ClipTask(model, train, args.max_steps)
    history = LossHistory(args.out, prefixes=("train/loss", "train/contrastive_loss", "train/caption_loss"),
                          title=f"{args.preset} {train.loss} loss")
    trainer = make_trainer(args, callbacks=[history], limit_val_batches=0, num_sanity_val_steps=0,
                           use_distributed_sampler=False)  # the stream splits shards; a PairSet's sampler, ranks
    fit_timer = Timer()
    trainer.fit(task, loader, ckpt_path=_ckpt(args))
    fit_s = fit_timer.elapsed
    model = gathered(model)  # FSDP: the full weights on rank 0 (a collective, so every rank calls it)
    if not trainer.is_global_zero:
        return {}
    eval_timer = Timer()
    model.to(trainer.strategy.root_device)  # Lightning moved it back to the CPU: evaluate where it trained
    metrics = evaluate_clip(model, test_data, None if args.no_probe else train_data)
    samples = task.samples_seen * trainer.world_size
    last = trainer.callback_metrics  # the last step's losses: train/loss (+ CoCa's contrastive and caption parts)
    metrics.update({k: float(last[k]) for k in ("train/contrastive_loss", "train/caption_loss") if k in last})
    metrics.update({"train/loss": float(last["train/loss"]) if "train/loss" in last else None,
                    "steps": trainer.global_step, "samples_seen": samples, "samples_per_s": round(samples / fit_s, 1),
                    "fit_s": round(fit_s, 1), "data_s": round(data_s, 1), "eval_s": round(eval_timer.elapsed, 1),
                    "skipped_samples": sum(task.skipped.values()), "params": model.num_params(),
                    **{k if k == "format" else f"split/{k}": v for k, v in split.items()}})  # as the other recipes
    _summary_png(model, test_data, history.history, Path(args.out) / "clip_summary.png")
    if model.decoder is not None:
        _log_captions(model, test_data)
    return finish(args, model, metrics, timer)


def _ckpt(args):
    from mmfm.train.recipe import checkpoint_to_resume

    return checkpoint_to_resume(args.resume)


def _log_captions(model, test_data, n: int = 8):
    """The CoCa decoder's greedy captions of n test images spread over the split, next to their real captions."""
    test = load_split(model, test_data)
    idx = torch.linspace(0, len(test["images"]) - 1, n).long().unique()
    ids = model.caption(test["images"][idx].to(model.logit_scale.device)).tolist()
    eot = model.config.eot_id
    for row, real in zip(ids, [test["captions"][i] for i in idx.tolist()]):
        log.info("caption: %r (real: %r)", model.tokenizer.decode(row[:row.index(eot)] if eot in row else row), real)


def _summary_png(model, test_data, history, path):
    classes = classes_of(test_data)
    if not classes:
        return
    test = load_split(model, test_data)
    examples = retrieval_examples(model, test["images"], test["labels"], test["sources"], classes)
    plot_summary(history, examples, path, model.config.image_mean, model.config.image_std,
                 f"{model.config.family} {model.num_params() / 1e6:.1f}M params")


if __name__ == "__main__":
    main(sys.argv[1:])
