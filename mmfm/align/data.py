"""Datasets of the three stages: packed pretraining windows, SFT chats, and preference pairs made by
sampling the SFT model several times per prompt and ranking the samples with the rule labeller."""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .chat import collate_chat, encode_chat
from .rollout import eval_prompts, generate_texts
from .splits import heldout_problems, train_problems
from .task import Problem, judge, prefer, solve

log = logging.getLogger(__name__)


class Windows(Dataset):
    """Pretraining: {"ids" (block+1,), "loss_mask" all ones}; reuses the chat collate."""

    def __init__(self, tok, docs: list[str], block: int):
        stream = []
        for d in docs:
            stream += tok.encode(d) + [tok.eos_id]
        n = (len(stream) - 1) // block
        self.rows = torch.tensor(stream[: n * block + 1], dtype=torch.long).unfold(0, block + 1, block)  # (n, block+1)

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        row = self.rows[i].tolist()
        return row, [1] * len(row)


class Chats(Dataset):
    """SFT: one (ids, loss_mask) per (prompt, response)."""

    def __init__(self, tok, prompts: list[str], responses: list[str]):
        self.rows = [encode_chat(tok, p, r) for p, r in zip(prompts, responses)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def sft_data(tok, problems: list[Problem], seed: int) -> Chats:
    """The small labelled set: each prompt with its clean worked answer."""
    return Chats(tok, eval_prompts(problems, seed), [solve(p) for p in problems])


def chat_collate(pad: int):
    return lambda batch: collate_chat(batch, pad)


def make_pairs(gpt, tok, problems: list[Problem], k: int = 4, temperature: float = 1.0, seed: int = 0,
               per_prompt: int = 2) -> list[dict]:
    """Sample k responses per prompt, rank with the labeller, keep up to `per_prompt` strict pairs."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    prompts = eval_prompts(problems, seed)
    samples = generate_texts(gpt, tok, [p for p in prompts for _ in range(k)], temperature=temperature, generator=gen)
    pairs = []
    for i, (prob, prompt) in enumerate(zip(problems, prompts)):
        outs = sorted(set(samples[i * k:(i + 1) * k]), key=lambda r: judge(prob, r), reverse=True)
        cands = [(x, y) for j, x in enumerate(outs) for y in outs[j + 1:] if prefer(prob, x, y) > 0]
        for x, y in rng.sample(cands, min(per_prompt, len(cands))):
            pairs.append({"a": prob.a, "op": prob.op, "b": prob.b, "prompt": prompt, "chosen": x, "rejected": y})
    correct = sum(judge(p, s)[0] == 2 for j, p in enumerate(problems) for s in samples[j * k:(j + 1) * k])
    log.info("%d pairs from %d prompts x %d samples; %.1f%% of samples correct", len(pairs), len(problems), k,
             100 * correct / max(len(samples), 1))
    return pairs


@dataclass
class PairConfig:
    """How the preference pairs are made (shared by the reward-model and DPO recipes: whichever runs
    first writes the pairs file, the other reuses it)."""
    n_prompts: int = 2048  # training prompts sampled for preferences
    n_heldout_prompts: int = 512
    samples: int = 8  # responses per prompt (T=1)
    pairs_per_prompt: int = 4  # at most this many strict pairs kept per prompt


def preference_pairs(path, sft_gpt, tok, cfg: PairConfig, seed: int) -> dict:
    """{"train": pairs, "heldout": pairs} from `path`, made (by sampling `sft_gpt` on training and on
    held-out prompts) and saved there first if it does not exist, so the reward model and DPO learn from
    the very same pairs."""
    path = Path(path)
    if path.is_file():
        log.info("reusing preference pairs from %s", path)
        return json.loads(path.read_text())
    train, heldout = train_problems("preference", cfg.n_prompts), heldout_problems("rm_eval", cfg.n_heldout_prompts)
    k, per = cfg.samples, cfg.pairs_per_prompt
    pairs = {"train": make_pairs(sft_gpt, tok, train, k, seed=seed, per_prompt=per),
             "heldout": make_pairs(sft_gpt, tok, heldout, k, seed=seed + 1, per_prompt=per)}
    if not pairs["train"] or not pairs["heldout"]:
        raise RuntimeError("no preference pairs: the labeller found every sampled response equally good or bad "
                           "(is the SFT model trained?); use more prompts or samples")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(pairs))
    return pairs


def problem_of(pair: dict) -> Problem:
    return Problem(pair["a"], pair["op"], pair["b"])


class Pairs(Dataset):
    """Preference pairs -> (chosen (ids, loss_mask), rejected (ids, loss_mask), index)."""

    def __init__(self, tok, pairs: list[dict]):
        self.rows = [(encode_chat(tok, q["prompt"], q["chosen"]), encode_chat(tok, q["prompt"], q["rejected"]))
                     for q in pairs]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return (*self.rows[i], i)


def pair_collate(pad: int):
    """-> {"chosen": chat batch, "rejected": chat batch, "index" (B,)}."""
    def collate(batch):
        return {"chosen": collate_chat([b[0] for b in batch], pad), "rejected": collate_chat([b[1] for b in batch], pad),
                "index": torch.tensor([b[2] for b in batch])}
    return collate
