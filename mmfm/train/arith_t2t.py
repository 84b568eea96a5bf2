"""The arithmetic task (mmfm.align.task) as text to text: a question in, the worked answer out, for an
encoder-decoder T5 and a decoder-only GPT of equal parameter count (T5's feed-forward width is solved for).

    cfg = ArithConfig()
    data = arith_data(cfg)                        # {"train", "test", "train_probe"}: (problems, prompts, targets)
    tok = arith_tokenizer(data)
    gpt = build_gpt(cfg, tok); t5 = build_t5_matching(cfg, tok, gpt.num_params())
    found = arith_scores(problems, generated_texts, cfg.target)   # exact match and answer accuracy
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from ..align.task import parse_answer, problems, prompt_text, solve
from ..config import ConfigError, opt
from ..models.gpt import GPT, GPTConfig
from ..models.t5 import T5, T5Config
from ..tokenizers import CharTokenizer

log = logging.getLogger(__name__)


@dataclass
class ArithConfig:
    """What recipes/t5_vs_gpt_arith.py may vary (overridable as key=value)."""

    batch_size: int = opt(64, lo=1)
    lr: float = opt(2e-3, gt=0.0)
    warmup_steps: int = opt(100, lo=0)
    weight_decay: float = opt(0.01, lo=0.0)
    n_train: int = opt(6000, lo=1)  # distinct training problems (of ~10.6k; held-out ones never among them)
    n_test: int = opt(500, lo=1)  # distinct held-out problems (mmfm.align.task.is_heldout; ~1.5k exist)
    n_probe: int = opt(200, lo=0)  # training problems scored the same way (fit, next to generalisation)
    target: str = opt("worked", choices=("worked", "answer"))  # "7+5=12,4+8+1=13. Answer: 132" or "132"
    n_embd: int = opt(128, lo=8)
    n_head: int = opt(4, lo=1)
    gpt_layers: int = opt(4, lo=1)
    t5_layers: int = opt(2, lo=1)  # encoder layers = decoder layers; d_ff solved to match the GPT's size
    threads: int = opt(0, lo=0)  # torch threads (0: torch's default; 1 wastes far less CPU on a loaded machine)


def _target(p, kind: str) -> str:
    return solve(p) if kind == "worked" else str(p.answer)


def arith_data(cfg: ArithConfig, seed: int = 0) -> dict[str, tuple[list, list[str], list[str]]]:
    """Distinct training and held-out problems, each with one of the task's prompt phrasings (seeded):
    {"train", "test", "train_probe"} -> (problems, prompts, targets)."""
    rng = random.Random(seed)
    out = {}
    for split, n, held in (("train", cfg.n_train, False), ("test", cfg.n_test, True)):
        probs = problems(n, seed + (split == "test"), heldout=held)
        out[split] = (probs, [prompt_text(p, rng) for p in probs], [_target(p, cfg.target) for p in probs])
    k = min(cfg.n_probe, cfg.n_train)
    out["train_probe"] = tuple(v[:k] for v in out["train"])
    return out


def arith_tokenizer(data: dict) -> CharTokenizer:
    """Characters of every training prompt and target, plus the digits and signs an answer may use."""
    _, prompts, targets = data["train"]
    return CharTokenizer.train("".join(prompts) + "".join(targets) + "0123456789+-=,.:? \n")


def build_gpt(cfg: ArithConfig, tok, block_size: int) -> GPT:
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=cfg.gpt_layers,
                        n_head=cfg.n_head, n_embd=cfg.n_embd, dropout=0.0))
    gpt.tokenizer = tok
    return gpt


def _t5(cfg: ArithConfig, tok, d_ff: int) -> T5:
    return T5(T5Config(vocab_size=tok.vocab_size, n_embd=cfg.n_embd, n_head=cfg.n_head,
                       head_dim=cfg.n_embd // cfg.n_head, d_ff=d_ff, n_layer=cfg.t5_layers,
                       n_decoder_layer=cfg.t5_layers, dropout=0.0, pad_id=tok.pad_id, eos_id=tok.eos_id))


def build_t5_matching(cfg: ArithConfig, tok, params: int) -> T5:
    """A T5 of cfg's width and depth whose feed-forward width makes its parameter count nearest `params`
    (the count is linear in d_ff)."""
    p64, p128 = _t5(cfg, tok, 64).num_params(), _t5(cfg, tok, 128).num_params()
    d_ff = round(64 + (params - p64) * 64 / (p128 - p64))
    if d_ff < 1:
        raise ConfigError(f"t5_layers={cfg.t5_layers}: a T5 that deep already has more than the GPT's {params:,} "
                          "parameters at d_ff=1; use fewer t5_layers or more gpt_layers")
    t5 = _t5(cfg, tok, d_ff)
    t5.tokenizer = tok
    log.info("T5 d_ff=%d: %d parameters vs the GPT's %d", d_ff, t5.num_params(), params)
    return t5


def arith_scores(probs: list, texts: list[str], target: str) -> dict[str, float]:
    """exact: the generated text equals the target; answer_accuracy: its (last) answer is right."""
    exact = [t == _target(p, target) for p, t in zip(probs, texts)]
    if target == "worked":
        right = [parse_answer(t) == p.answer for p, t in zip(probs, texts)]
    else:
        right = [t.strip().lstrip("-").isdigit() and int(t) == p.answer for p, t in zip(probs, texts)]
    n = max(1, len(probs))
    return {"exact": sum(exact) / n, "answer_accuracy": sum(right) / n, "n": len(probs)}


def longest(tok, texts: list[str]) -> int:
    return max(len(tok.encode(t)) for t in texts)


def examples_table(probs, prompts, texts, k: int = 5) -> list[dict]:
    """A few generated answers for the report."""
    return [{"prompt": q, "generated": t, "answer": p.answer} for p, q, t in list(zip(probs, prompts, texts))[:k]]

