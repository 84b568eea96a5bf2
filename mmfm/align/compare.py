"""The comparison table of docs/grpo.md: the align_all.sh stages (SFT, PPO, DPO, scored on the confirmation set by
mmfm.align.confirm) next to RL runs (recipes/grpo.py, which scores itself on the same 808 problems, and re-runs of
recipes/ppo.py, scored afterwards with --score), and the mean and spread over seeds of runs named <name>_seed<k>.

    python -m mmfm.align.compare runs/align runs/align_grpo/dapo runs/align_grpo/rloo   # markdown tables
    python -m mmfm.align.compare --score runs/align_grpo/ppo    # -> runs/align_grpo/ppo/confirm_metrics.json
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

import torch

HEADER = ("| method | confirm greedy (%) | confirm sampled T=1 (%) | format (%) | KL to SFT | mean length | "
          "tuning split greedy (%) | steps | train_s | wall_s |\n|---|---|---|---|---|---|---|---|---|---|")
SEED_HEADER = ("| method | seeds | confirm greedy (%) | confirm sampled T=1 (%) | tuning split greedy (%) | KL to SFT |"
               "\n|---|---|---|---|---|---|")


@torch.no_grad()
def confirm_metrics(policy, reference, tok, n_eval: int = 400) -> dict:
    """The arithmetic task: the 808 confirmation problems (greedy and T=1 accuracy, format rate, mean length), the
    `n_eval` tuning problems (heldout), and the KL to the SFT model (`reference`) on them."""
    from .confirm import confirm_problems
    from .rewards import format_reward
    from .rollout import eval_prompts, evaluate, generate_texts, kl_to_reference, task_metrics
    from .splits import heldout_problems

    problems = confirm_problems()
    prompts = eval_prompts(problems)
    greedy = generate_texts(policy, tok, prompts)
    sampled = generate_texts(policy, tok, prompts, temperature=1.0, generator=torch.Generator(
        next(policy.parameters()).device).manual_seed(0))
    tuning = heldout_problems("eval", n_eval)
    return {"confirm/greedy": task_metrics(problems, greedy)["accuracy"],
            "confirm/sampled": task_metrics(problems, sampled)["accuracy"],
            "format_rate": sum(format_reward(prompts, greedy)) / len(greedy),
            "mean_len": task_metrics(problems, greedy)["mean_len"], "confirm_n": len(problems),
            "heldout": evaluate(policy, tok, tuning), "heldout_t1": evaluate(policy, tok, tuning, temperature=1.0),
            "kl_to_sft": kl_to_reference(policy, reference, tok, tuning)}


def score(run: Path, init: Path) -> dict:
    """confirm_metrics of <run>/model against the SFT model `init`, written to <run>/confirm_metrics.json (flat keys,
    as metrics.json): for runs of recipes that do not score themselves on the confirmation set (ppo.py)."""
    import mmfm
    from ..train.recipe import flatten

    policy, reference = mmfm.build_model(run / "model").eval(), mmfm.build_model(init).eval()
    metrics = flatten(confirm_metrics(policy, reference, policy.tokenizer))
    (run / "confirm_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _stage_walls(run: Path) -> dict[str, int]:
    """Seconds per stage as align_all.sh printed them into a log next to the run (runs/logs/align_all.log)."""
    for log in (run / "align_all.log", run.parent / "logs" / "align_all.log"):
        if log.is_file():
            found = re.findall(r"recipes/(\w+)\.py done in (\d+) s", log.read_text(errors="ignore"))
            return {name: int(s) for name, s in found}
    return {}


def run_metrics(run: Path) -> dict:
    """metrics.json of an RL run, with confirm_metrics.json (from --score) over it when there is one."""
    m = json.loads((run / "metrics.json").read_text())
    extra = run / "confirm_metrics.json"
    return {**m, **json.loads(extra.read_text())} if extra.is_file() else m


def _label(m: dict) -> str:
    return f"grpo.py loss={m['loss']}" if "loss" in m else "ppo.py"


def _num(m: dict, key: str, fmt: str = ".0f") -> str:
    return format(m[key], fmt) if key in m else "-"


def pipeline_rows(run: Path) -> list[str]:
    confirm, walls, out = json.loads((run / "confirm.json").read_text()), _stage_walls(run), []
    for stage in ("sft", "ppo", "dpo"):
        m = json.loads((run / stage / "metrics.json").read_text())
        wall = f"{m['wall_s']:.0f} (stage {walls[stage]})" if stage in walls else f"{m['wall_s']:.0f}"
        out.append(f"| {stage} ({run.name}) | {100 * confirm[stage]['greedy']:.1f} | "
                   f"{100 * confirm[stage]['sampled_t1']:.1f} | - | {_num(m, 'kl_to_sft', '.2f')} | - | "
                   f"{100 * m['heldout/accuracy']:.1f} | {_num(m, 'steps', 'd')} | - | {wall} |")
    return out


def rows(run: Path | None, rl_runs: list[Path]) -> list[str]:
    out = pipeline_rows(run) if run is not None else []
    for g in rl_runs:
        m = run_metrics(g)
        out.append(f"| {_label(m)} ({g.name}) | {100 * m['confirm/greedy']:.1f} | {100 * m['confirm/sampled']:.1f} | "
                   f"{100 * m['format_rate']:.1f} | {m['kl_to_sft']:.2f} | {m['mean_len']:.1f} | "
                   f"{100 * m['heldout/accuracy']:.1f} | {m['steps']} | {_num(m, 'train_s')} | {m['wall_s']:.0f} |")
    return out


def _spread(values: list[float], scale: float = 100.0, fmt: str = ".1f") -> str:
    """mean ± sample std, and [min, max]."""
    v = [scale * x for x in values]
    std = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):{fmt}} ± {std:{fmt}} [{min(v):{fmt}}, {max(v):{fmt}}]"


def seed_rows(rl_runs: list[Path]) -> list[str]:
    """One row per group of runs that differ only by seed (<name> is seed 0, <name>_seed<k> the others), for every
    group with more than one run."""
    groups: dict[str, list[dict]] = {}
    for g in rl_runs:
        groups.setdefault(re.sub(r"_seed\d+$", "", g.name), []).append(run_metrics(g))
    out = []
    for name, ms in groups.items():
        if len(ms) < 2:
            continue
        col = lambda key: [m[key] for m in ms]  # noqa: E731
        out.append(f"| {_label(ms[0])} ({name}) | {len(ms)} | {_spread(col('confirm/greedy'))} | "
                   f"{_spread(col('confirm/sampled'))} | {_spread(col('heldout/accuracy'))} | "
                   f"{_spread(col('kl_to_sft'), 1.0, '.2f')} |")
    return out


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="*", type=Path, help="the align_all.sh run (with confirm.json) first, then RL runs")
    p.add_argument("--score", type=Path, help="score this run's model on the confirmation set and exit")
    p.add_argument("--init", type=Path, default=Path("runs/align/sft/model"), help="the SFT model (KL reference)")
    args = p.parse_args(argv)
    if args.score is not None:
        return json.dumps(score(args.score, args.init))
    runs = args.runs or [Path("runs/align")]
    pipeline = runs[0] if (runs[0] / "confirm.json").is_file() else None
    rl = runs[1:] if pipeline is not None else runs
    table = "\n".join([HEADER, *rows(pipeline, rl)])
    seeds = seed_rows(rl)
    if seeds:
        table += "\n\nOver seeds (mean ± std [min, max]):\n\n" + "\n".join([SEED_HEADER, *seeds])
    print(table)
    return table


if __name__ == "__main__":
    main()
