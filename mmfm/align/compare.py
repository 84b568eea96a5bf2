"""The comparison table of docs/grpo.md: the align_all.sh stages (SFT, PPO, DPO, scored on the confirmation set by
mmfm.align.confirm) next to RL runs of recipes/grpo.py, which score themselves on the same 808 problems.

    python -m mmfm.align.compare runs/align runs/align_grpo/dapo runs/align_grpo/rloo   # a markdown table
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HEADER = ("| method | confirm greedy (%) | confirm sampled T=1 (%) | format (%) | KL to SFT | mean length | "
          "tuning split greedy (%) | wall_s |\n|---|---|---|---|---|---|---|---|")


def _stage_walls(run: Path) -> dict[str, int]:
    """Seconds per stage as align_all.sh printed them into a log next to the run (runs/logs/align_all.log)."""
    for log in (run / "align_all.log", run.parent / "logs" / "align_all.log"):
        if log.is_file():
            found = re.findall(r"recipes/(\w+)\.py done in (\d+) s", log.read_text(errors="ignore"))
            return {name: int(s) for name, s in found}
    return {}


def rows(run: Path, grpo_runs: list[Path]) -> list[str]:
    confirm, walls, out = json.loads((run / "confirm.json").read_text()), _stage_walls(run), []
    for stage in ("sft", "ppo", "dpo"):
        m = json.loads((run / stage / "metrics.json").read_text())
        wall = f"{m['wall_s']:.0f} (stage {walls[stage]})" if stage in walls else f"{m['wall_s']:.0f}"
        kl = f"{m['kl_to_sft']:.2f}" if "kl_to_sft" in m else "-"
        out.append(f"| {stage} | {100 * confirm[stage]['greedy']:.1f} | {100 * confirm[stage]['sampled_t1']:.1f} | - | "
                   f"{kl} | - | {100 * m['heldout/accuracy']:.1f} | {wall} |")
    for g in grpo_runs:
        m = json.loads((g / "metrics.json").read_text())
        out.append(f"| grpo.py loss={m['loss']} ({m['steps']} steps) | {100 * m['confirm/greedy']:.1f} | "
                   f"{100 * m['confirm/sampled']:.1f} | {100 * m['format_rate']:.1f} | {m['kl_to_sft']:.2f} | "
                   f"{m['mean_len']:.1f} | {100 * m['heldout/accuracy']:.1f} | {m['wall_s']:.0f} |")
    return out


def main(argv=None) -> str:
    args = [Path(a) for a in (argv or sys.argv[1:] or ["runs/align"])]
    table = "\n".join([HEADER, *rows(args[0], args[1:])])
    print(table)
    return table


if __name__ == "__main__":
    main()
