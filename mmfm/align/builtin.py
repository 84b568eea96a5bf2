"""The built-in arithmetic task written as a user's files (TRL's JSONL shapes, mmfm.align.formats), so that the
no-argument recipes read their data back through the same layer as a user's:

    sft.jsonl, sft_val.jsonl                    {"prompt": "What is 52-38?", "completion": "12-8=4,5-3-1=1. Answer: 14"}
    preferences.jsonl, preferences_heldout.jsonl {"prompt": ..., "chosen": ..., "rejected": ..., "a": 52, "op": "-", "b": 38}
    prompts.jsonl, prompts_eval.jsonl           {"prompt": "Compute 47+85.", "answer": 132}

Preference pairs come from sampling the SFT model `samples` times per prompt at temperature 1 and ranking the
distinct samples with the rule labeller (mmfm.align.task.prefer).
"""
from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoint import atomic_write_text
from .rollout import eval_prompts, generate_texts
from .splits import heldout_problems, train_problems
from .task import Problem, judge, prefer, solve

log = logging.getLogger(__name__)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))
    log.info("wrote %d records to %s", len(records), path)
    return path


def write_sft(folder, n_train: int, n_val: int, seed: int) -> tuple[Path, Path]:
    """The small labelled set (each training prompt with its clean worked answer) and a held-out one."""
    def records(problems):
        return [{"prompt": q, "completion": solve(p)} for p, q in zip(problems, eval_prompts(problems, seed))]
    folder = Path(folder)
    return (write_jsonl(folder / "sft.jsonl", records(train_problems("sft", n_train))),
            write_jsonl(folder / "sft_val.jsonl", records(heldout_problems("eval", n_val))))


def write_prompts(folder, n_pool: int, n_eval: int, seed: int) -> tuple[Path, Path]:
    """RL prompts with their `answer` column (for mmfm.align.rewards:exact_match): training and held-out."""
    def records(problems):
        return [{"prompt": q, "answer": p.answer} for p, q in zip(problems, eval_prompts(problems, seed))]
    folder = Path(folder)
    return (write_jsonl(folder / "prompts.jsonl", records(train_problems("ppo", n_pool))),
            write_jsonl(folder / "prompts_eval.jsonl", records(heldout_problems("eval", n_eval))))


@dataclass
class PairConfig:
    """How the built-in task's preference pairs are made (by the reward-model or DPO recipe run without --data)."""
    n_prompts: int = 2048  # training prompts sampled for preferences
    n_heldout_prompts: int = 512
    samples: int = 8  # responses per prompt (T=1)
    pairs_per_prompt: int = 4  # at most this many strict pairs kept per prompt


def writable(tok, samples: list[str]) -> list[str]:
    """The distinct samples that hold no special-token text (a barely trained model samples <|user|> and the
    like mid-answer): written as JSONL they would read back as plain characters, not as the sampled tokens."""
    specials = [s for s in getattr(tok, "special_tokens", {})]
    return sorted(r for r in set(samples) if not any(s in r for s in specials))


def make_pairs(gpt, tok, problems: list[Problem], k: int = 4, temperature: float = 1.0, seed: int = 0,
               per_prompt: int = 2) -> list[dict]:
    """Sample k responses per prompt, rank with the labeller, keep up to `per_prompt` strict pairs."""
    rng, gen = random.Random(seed), torch.Generator(next(gpt.parameters()).device).manual_seed(seed)
    prompts = eval_prompts(problems, seed)
    samples = generate_texts(gpt, tok, [p for p in prompts for _ in range(k)], temperature=temperature, generator=gen)
    pairs, dropped = [], sum(len(writable(tok, [s])) == 0 for s in samples)
    for i, (prob, prompt) in enumerate(zip(problems, prompts)):
        outs = sorted(writable(tok, samples[i * k:(i + 1) * k]), key=lambda r: judge(prob, r), reverse=True)
        cands = [(x, y) for j, x in enumerate(outs) for y in outs[j + 1:] if prefer(prob, x, y) > 0]
        for x, y in rng.sample(cands, min(per_prompt, len(cands))):
            pairs.append({"prompt": prompt, "chosen": x, "rejected": y, "a": prob.a, "op": prob.op, "b": prob.b})
    correct = sum(judge(p, s)[0] == 2 for j, p in enumerate(problems) for s in samples[j * k:(j + 1) * k])
    log.info("%d pairs from %d prompts x %d samples; %.1f%% of samples correct; %d samples with special-token text "
             "left out", len(pairs), len(problems), k, 100 * correct / max(len(samples), 1), dropped)
    return pairs


def write_preferences(folder, sft_gpt, tok, cfg: PairConfig, seed: int) -> tuple[Path, Path]:
    """Pairs sampled from `sft_gpt` on training and on held-out prompts -> preferences.jsonl and
    preferences_heldout.jsonl in `folder`."""
    train, heldout = train_problems("preference", cfg.n_prompts), heldout_problems("rm_eval", cfg.n_heldout_prompts)
    k, per = cfg.samples, cfg.pairs_per_prompt
    sft_gpt.eval()
    pairs = {"train": make_pairs(sft_gpt, tok, train, k, seed=seed, per_prompt=per),
             "heldout": make_pairs(sft_gpt, tok, heldout, k, seed=seed + 1, per_prompt=per)}
    if not pairs["train"] or not pairs["heldout"]:
        raise RuntimeError("no preference pairs: the labeller found every sampled response equally good or bad "
                           "(is the SFT model trained?); use more prompts or samples")
    folder = Path(folder)
    return (write_jsonl(folder / "preferences.jsonl", pairs["train"]),
            write_jsonl(folder / "preferences_heldout.jsonl", pairs["heldout"]))


def problem_of(extra: dict) -> Problem | None:
    """The task problem of a record's extra columns (a, op, b), or None for a user's record."""
    return Problem(extra["a"], extra["op"], extra["b"]) if {"a", "op", "b"} <= set(extra) else None
