"""The other heads on the text tasks, next to BERT's classifier (mmfm.train.text_classify): a GPT with
last-token pooling, T5 and GPT as text-to-text models (targets generated as text, scored by exact match), and
mean-pooled BERT sentence embeddings with nearest-neighbour retrieval.

Every head is a plain `nn.Module` whose `forward(x)` returns logits the shared `AdaptTask` trains with its
multi-class cross-entropy (`TaskKind("multiclass", ...)`): class logits (B, K) for `LastTokenClassifier`,
token logits (B, V, T) against labels (B, T) with -100 on ignored positions for `Seq2Seq` and `CausalLM`.
So one training loop serves BERT, GPT and T5.

    x, y = encode_seq2seq(tok, sources, targets, 64, 8)     # x (N, 3, W): encoder ids, mask, decoder inputs
    model = Seq2Seq(t5, 8)                                  # model(x) -> (B, V, 8) against y (N, 8)
    texts = generate_texts(t5, x, max_new_tokens=8)         # greedy, decoded
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchmetrics.functional.classification as tmc

from ..data.stepstream import resumable_loader

log = logging.getLogger(__name__)


class LastTokenClassifier(nn.Module):
    """A GPT's final hidden state at each row's last real token -> a fresh linear classifier:
    forward(x (B, 2, T) = [ids; mask], right-padded) -> (B, K). The GPT's LM head is replaced by the identity
    (its tied embedding stays), so the GPT returns hidden states (B, T, C)."""

    def __init__(self, gpt: nn.Module, num_labels: int):
        super().__init__()
        gpt.lm_head = nn.Identity()
        self.gpt = gpt
        self.head = nn.Linear(gpt.config.n_embd, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1]
        width = int(mask.sum(1).max())
        h = self.gpt(ids[:, :width])  # (B, T, C); causal, so right padding never reaches a real token
        last = mask[:, :width].sum(1) - 1  # (B,)
        return self.head(h[torch.arange(len(ids), device=ids.device), last])


class Seq2Seq(nn.Module):
    """T5 teacher-forced: forward(x (B, 3, W) = [encoder ids; encoder mask; decoder inputs]) -> logits
    (B, V, target_len) against labels (B, target_len) from `encode_seq2seq`; encoder columns past the batch's
    longest source are dropped."""

    def __init__(self, t5: nn.Module, target_len: int):
        super().__init__()
        self.t5, self.target_len = t5, target_len

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask, dec = x[:, 0], x[:, 1], x[:, 2, :self.target_len]
        width = int(mask.sum(1).max())
        return self.t5(ids[:, :width], dec, mask[:, :width]).transpose(1, 2)  # (B, T, V) -> (B, V, T)


class CausalLM(nn.Module):
    """A GPT on prompt + target rows: forward(x (B, T)) -> next-token logits (B, V, T) (labels from
    `encode_causal` are -100 on the prompt and padding)."""

    def __init__(self, gpt: nn.Module):
        super().__init__()
        self.gpt = gpt

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gpt(x).transpose(1, 2)  # (B, T, V) -> (B, V, T)


def train_steps(args, name: str, model: nn.Module, train: tuple, batch_size: int, lr: float, weight_decay: float,
                warmup_steps: int, weight: torch.Tensor | None = None) -> nn.Module:
    """Train `model` (x -> logits) on train = (x, y) for args.max_steps with the shared AdaptTask (multi-class
    cross-entropy, class-weighted by `weight`; AdamW, warmup + cosine), shuffled batches seeded by args.seed;
    logs and checkpoints under <args.out>/<name>. Returns the model on the CPU."""
    from ..adapt.kinds import TaskKind
    from ..adapt.task import AdaptTask
    from .recipe import make_trainer

    x, y = train
    loader = resumable_loader(torch.utils.data.TensorDataset(x, y), batch_size, args.seed)
    if len(loader) == 0:
        raise ValueError(f"{len(x)} training examples make no batch of batch_size={batch_size}")
    kind = TaskKind("multiclass", max(2, int(y.max()) + 1), weight)
    task = AdaptTask(model, kind, lr, weight_decay, warmup_steps, args.max_steps)
    run_args = argparse.Namespace(**{**vars(args), "out": str(Path(args.out) / name)})
    trainer = make_trainer(run_args, limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=1.0)
    trainer.fit(task, loader)
    return model.to("cpu")


def _ids(tok, texts: list[str]) -> list[list[int]]:
    return tok.encode_many(texts) if hasattr(tok, "encode_many") else [tok.encode(t) for t in texts]


def encode_seq2seq(tok, sources: list[str], targets: list[str], src_len: int, tgt_len: int):
    """T5 rows: sources cut to src_len - 1 tokens + eos; targets + eos cut to tgt_len. Returns x (N, 3, W)
    (encoder ids, 0/1 mask, decoder inputs = start token + target[:-1]) and labels y (N, tgt_len), -100 padded."""
    src, tgt = _ids(tok, sources), _ids(tok, targets)
    width = max(src_len, tgt_len)
    x = torch.full((len(src), 3, width), tok.pad_id, dtype=torch.long)
    x[:, 1] = 0
    y = torch.full((len(src), tgt_len), -100, dtype=torch.long)
    for i, (s, t) in enumerate(zip(src, tgt)):
        s, t = s[:src_len - 1] + [tok.eos_id], (t + [tok.eos_id])[:tgt_len]
        x[i, 0, :len(s)], x[i, 1, :len(s)] = torch.tensor(s), 1
        x[i, 2, 1:len(t)] = torch.tensor(t[:-1])  # column 0 stays pad_id: T5's start token
        y[i, :len(t)] = torch.tensor(t)
    return x, y


def encode_causal(tok, prompts: list[str], targets: list[str], max_len: int):
    """GPT rows prompt + target + eos, right-padded to max_len: x (N, T) and next-token labels y (N, T),
    -100 on the prompt and the padding. Refuses rows longer than max_len."""
    rows = [(p, t + [tok.eos_id]) for p, t in zip(_ids(tok, prompts), _ids(tok, targets))]
    longest = max(len(p) + len(t) for p, t in rows)
    if longest > max_len:
        raise ValueError(f"a prompt + target of {longest} tokens exceeds max_len={max_len}")
    x = torch.full((len(rows), max_len), tok.pad_id, dtype=torch.long)
    y = torch.full((len(rows), max_len), -100, dtype=torch.long)
    for i, (p, t) in enumerate(rows):
        seq = p + t
        x[i, :len(seq)] = torch.tensor(seq)
        y[i, len(p) - 1:len(seq) - 1] = torch.tensor(t)  # position j predicts token j + 1
    return x, y


@torch.no_grad()
def over_batches(module: nn.Module, x: torch.Tensor, fn, batch_size: int = 256) -> list:
    """[fn(ids, mask) for each batch of x (N, >= 2, T) = [ids; mask; ...]], in eval mode (restored after), the
    columns past each batch's longest row dropped."""
    was_training = module.training
    module.eval()
    out = []
    for i in range(0, len(x), batch_size):
        ids, mask = x[i:i + batch_size, 0], x[i:i + batch_size, 1]
        width = int(mask.sum(1).max())
        out.append(fn(ids[:, :width], mask[:, :width]))
    module.train(was_training)
    return out


def generate_texts(t5: nn.Module, x: torch.Tensor, max_new_tokens: int, batch_size: int = 256) -> list[str]:
    """Greedy T5 outputs for x (N, 3, W) from `encode_seq2seq`, decoded up to the first eos."""
    rows = over_batches(t5, x, lambda ids, mask: t5.generate(ids, max_new_tokens, mask).tolist(), batch_size)
    return _decode(t5.tokenizer, [r for batch in rows for r in batch])


@torch.no_grad()
def generate_causal(gpt: nn.Module, prompts: list[str], max_new_tokens: int, batch_size: int = 256) -> list[str]:
    """Greedy GPT continuations of `prompts`, decoded up to the first eos."""
    tok, out = gpt.tokenizer, []
    for i in range(0, len(prompts), batch_size):
        gen = gpt.generate(_ids(tok, prompts[i:i + batch_size]), max_new_tokens, temperature=0.0,
                           stop_tokens=[tok.eos_id])
        out += _decode(tok, gen.tolist())
    return out


def _decode(tok, rows: list[list[int]]) -> list[str]:
    return [tok.decode(r[:r.index(tok.eos_id)] if tok.eos_id in r else r).strip() for r in rows]


def name_scores(texts: list[str], names: list[str], target: torch.Tensor) -> dict[str, float]:
    """Generated names scored by exact match: accuracy and macro-F1 (torchmetrics) over the K classes; a text
    that is no class name is an extra (K-th) prediction, wrong for every row; `valid` is the share of
    texts that name some class."""
    index = {n: k for k, n in enumerate(names)}
    k = len(names)
    pred = torch.tensor([index.get(t, k) for t in texts])
    f1 = tmc.multiclass_f1_score(pred, target, k + 1, average="none")[:k]  # per class, the invalid one dropped
    return {"accuracy": float((pred == target).float().mean()), "macro_f1": float(f1.mean()),
            "valid": float((pred < k).float().mean())}


def embed_texts(bert: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Mean-pooled BERT embeddings (padding masked, `BERT.embed`) of x (N, 2, T) = [ids; mask]: (N, C)."""
    return torch.cat(over_batches(bert, x, lambda ids, mask: bert.embed(ids, mask).float(), batch_size))


def nearest_labels(index: torch.Tensor, index_labels: torch.Tensor, queries: torch.Tensor,
                   chunk: int = 1024) -> torch.Tensor:
    """Each query's label = the label of its nearest index row by cosine similarity (top-1): (Q,)."""
    index = F.normalize(index.float(), dim=-1)
    out = []
    for i in range(0, len(queries), chunk):
        sim = F.normalize(queries[i:i + chunk].float(), dim=-1) @ index.T  # (q, N)
        out.append(index_labels[sim.argmax(1)])
    return torch.cat(out)


def label_scores(pred: torch.Tensor, target: torch.Tensor, num_labels: int) -> dict[str, float]:
    """top-1 accuracy and macro-F1 (torchmetrics) of predicted labels."""
    return {"top1": float((pred == target).float().mean()),
            "macro_f1": float(tmc.multiclass_f1_score(pred, target, num_labels, average="macro"))}
