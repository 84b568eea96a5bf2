"""A checkable task: 2-digit addition / subtraction with a column-by-column chain of thought.

    prompt    "What is 52-38?"
    response  "12-8=4,5-3-1=1. Answer: 14"        (borrow shown as a leading 1, then -1 next column)
    prompt    "Compute 47+85."
    response  "7+5=12,4+8+1=13. Answer: 132"

`solve` handles any number of digits; `sample_problem` draws 2-digit operands (10-99), which a
small char-level GPT learns within a CPU budget.

The rule `judge` plays the human labeller: correct beats incorrect, an answer beats a question,
concise beats rambling. `corpus` writes noisy "web text" of worked examples for pretraining, in a
plain Q:/A: format (no chat tokens), where some writers make the two classic column-arithmetic
bugs: forgetting the carry, and subtracting the smaller digit from the larger ("smaller-from-larger").
Held-out problems (`is_heldout`) never appear in any training text.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

PROMPTS = ("What is {q}?", "Compute {q}.", "Calculate {q}.", "{q}=?")
RAMBLE_PRE = ("Hmm, let me think about this. ", "Sure! Numbers are fun. ", "Okay, so, well, let us see. ")
RAMBLE_POST = (" I hope this helps!", " Math is great, is it not?", " Let me know if you need more.")
QUESTIONS = ("Do you want the steps for {q}?", "Why do you ask about {q}?", "Can you try {q} first?")
ANSWER = re.compile(r"Answer: (-?\d+)")


@dataclass(frozen=True)
class Problem:
    a: int
    op: str  # "+" or "-" (a >= b for "-")
    b: int

    @property
    def text(self) -> str:
        return f"{self.a}{self.op}{self.b}"

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b


def is_heldout(p: Problem) -> bool:
    """A fixed ~1/8 of all problems: never in pretraining, SFT, preference or PPO data."""
    return (p.a * 7919 + p.b * 104729 + (p.op == "-")) % 8 == 0


def needs_regrouping(p: Problem) -> bool:
    """A carry (+) or a borrow (-) is needed: where the two classic bugs change the answer."""
    return solve(p, bug=True) != solve(p)


def sample_problem(rng: random.Random, heldout: bool = False) -> Problem:
    """2-digit operands; problems without a carry/borrow are kept with probability 1/3 (~73% need one)."""
    while True:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        op = rng.choice("+-")
        if op == "-" and a < b:
            a, b = b, a
        p = Problem(a, op, b)
        if is_heldout(p) == heldout and (needs_regrouping(p) or rng.random() < 1 / 3):
            return p


def problems(n: int, seed: int, heldout: bool = False) -> list[Problem]:
    """n distinct problems from one split; the same seed gives the same list."""
    rng, seen = random.Random(seed), {}
    while len(seen) < n:
        p = sample_problem(rng, heldout)
        seen.setdefault(p, None)
    return list(seen)


def solve(p: Problem, bug: bool = False) -> str:
    """The worked answer; bug=True forgets the carries between columns (+) or subtracts
    smaller-from-larger (-)."""
    width = max(len(str(p.a)), len(str(p.b)))
    xs, ys = str(p.a).zfill(width)[::-1], str(p.b).zfill(width)[::-1]
    steps, digits, carry = [], [], 0
    for x, y in zip(map(int, xs), map(int, ys)):
        c = "" if (bug or not carry) else "+1" if p.op == "+" else "-1"
        if p.op == "+":
            s = x + y + (0 if bug else carry)
            steps.append(f"{x}+{y}{c}={s}")
            digits.append(s % 10)
            carry = s // 10
        elif bug:
            steps.append(f"{max(x, y)}-{min(x, y)}={abs(x - y)}")
            digits.append(abs(x - y))
        else:
            top = x - carry
            carry = int(top < y)
            steps.append(f"{'1' if carry else ''}{x}-{y}{c}={top + 10 * carry - y}")
            digits.append(top + 10 * carry - y)
    if p.op == "+" and carry:  # the last column's sum is written in full, even by the buggy writer
        digits.append(carry)
    value = int("".join(map(str, digits[::-1])))
    return ",".join(steps) + f". Answer: {value}"


def parse_answer(response: str) -> int | None:
    found = ANSWER.findall(response)
    return int(found[-1]) if found else None


def judge(p: Problem, response: str) -> tuple[int, int]:
    """The labeller's score, compared lexicographically: (level, -length).
    level 2 = correct answer, 1 = wrong answer, 0 = no answer (a question, garbage)."""
    ans = parse_answer(response)
    level = 0 if ans is None else 2 if ans == p.answer else 1
    return level, -len(response)


def prefer(p: Problem, x: str, y: str, min_len_gap: int = 8) -> int:
    """+1 if the labeller prefers x, -1 if y, 0 if it has no preference."""
    (lx, nx), (ly, ny) = judge(p, x), judge(p, y)
    if lx != ly:
        return 1 if lx > ly else -1
    if lx == 2 and abs(nx - ny) >= min_len_gap:  # both correct: the concise one wins
        return 1 if nx > ny else -1
    return 0


def prompt_text(p: Problem, rng: random.Random) -> str:
    return rng.choice(PROMPTS).format(q=p.text)


def noisy_response(p: Problem, rng: random.Random, bug_rate: float, ramble: float, question: float) -> str:
    """How a random web writer answers: sometimes buggy, rambling, or with a question instead."""
    u = rng.random()
    if u < question:
        return rng.choice(QUESTIONS).format(q=p.text)
    text = solve(p, bug=rng.random() < bug_rate)
    if u < question + ramble:
        text = rng.choice(RAMBLE_PRE) + text + rng.choice(RAMBLE_POST)
    return text


def corpus(n_items: int, seed: int, bug_rate: float = 0.6, ramble: float = 0.1, question: float = 0.1,
           items_per_doc: int = 4) -> list[str]:
    """Pretraining documents of Q:/A: worked examples from the training split only."""
    rng, docs = random.Random(seed), []
    for _ in range(0, n_items, items_per_doc):
        items = []
        for _ in range(items_per_doc):
            p = sample_problem(rng)
            items.append(f"Q: {prompt_text(p, rng)}\nA: {noisy_response(p, rng, bug_rate, ramble, question)}")
        docs.append("\n\n".join(items))
    return docs


def pair_kind(p: Problem, chosen: str, rejected: str) -> str:
    """Why the labeller preferred `chosen`: correct>wrong, answer>none, or concise>rambling."""
    (lc, _), (lr, _) = judge(p, chosen), judge(p, rejected)
    return {(2, 1): "correct>wrong", (2, 0): "answer>none", (1, 0): "answer>none"}.get((lc, lr), "concise>rambling")
