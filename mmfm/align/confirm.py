"""A confirmation set that no alignment setting was chosen on: every held-out problem outside both the
tuning/eval prompts (`eval`, the 400 that every recipe reports) and the reward model's held-out
prompts (`rm_eval`, 512). Each stage's saved model is scored on it, greedy and sampled at T=1.

    python -m mmfm.align.confirm runs/align        # -> runs/align/confirm.json and a table on stdout
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

import mmfm

from .builtin import PairConfig
from .rollout import eval_prompts, generate_texts, task_metrics
from .splits import heldout_problems
from .task import Problem, is_heldout, needs_regrouping

STAGES = ("sft", "ppo", "dpo")


def confirm_problems(n_eval: int = 400, n_rm_eval: int = PairConfig.n_heldout_prompts) -> list[Problem]:
    """All held-out 2-digit problems minus the ones any recipe evaluated or tuned on."""
    used = set(heldout_problems("eval", n_eval)) | set(heldout_problems("rm_eval", n_rm_eval))
    every = (Problem(a, op, b) for a in range(10, 100) for b in range(10, 100) for op in "+-"
             if not (op == "-" and a < b))
    return [p for p in every if is_heldout(p) and p not in used]


def _accuracy(problems: list[Problem], responses: list[str], keep=lambda p: True) -> float:
    rows = [(p, r) for p, r in zip(problems, responses) if keep(p)]
    return task_metrics([p for p, _ in rows], [r for _, r in rows])["accuracy"]


def confirm(run: str | Path, stages=STAGES) -> dict:
    """{stage: {"greedy", "sampled_t1", "greedy_regrouping", "greedy_no_regrouping"}} on the confirmation set;
    the two subsets are read off the same greedy responses."""
    probs = confirm_problems()
    prompts = eval_prompts(probs)
    out = {"n_problems": len(probs), "n_regrouping": sum(map(needs_regrouping, probs))}
    for stage in stages:
        model = mmfm.build_model(Path(run) / stage / "model")
        greedy = generate_texts(model, model.tokenizer, prompts)
        sampled = generate_texts(model, model.tokenizer, prompts, temperature=1.0,
                                 generator=torch.Generator().manual_seed(0))
        out[stage] = {"greedy": _accuracy(probs, greedy), "sampled_t1": _accuracy(probs, sampled),
                      "greedy_regrouping": _accuracy(probs, greedy, needs_regrouping),
                      "greedy_no_regrouping": _accuracy(probs, greedy, lambda p: not needs_regrouping(p))}
    return out


def main(argv=None) -> dict:
    run = Path((argv or sys.argv[1:] or ["runs/align"])[0])
    result = confirm(run)
    (run / "confirm.json").write_text(json.dumps(result, indent=2))
    print(f"confirmation set: {result['n_problems']} held-out problems never used for evaluation or tuning "
          f"({result['n_regrouping']} need a carry/borrow)")
    for stage in STAGES:
        r = result[stage]
        print(f"{stage:>4}: greedy {100 * r['greedy']:.2f}%  sampled {100 * r['sampled_t1']:.2f}%  "
              f"(carry/borrow {100 * r['greedy_regrouping']:.2f}%, none {100 * r['greedy_no_regrouping']:.2f}%)")
    return result


if __name__ == "__main__":
    main()
