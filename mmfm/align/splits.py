"""Which problems each stage may see. Training stages draw from the training split with their own
seeds; every reported number uses held-out problems (`task.is_heldout`), which no stage trains on."""
from __future__ import annotations

from .task import Problem, problems

SEEDS = {"sft": 1, "preference": 2, "ppo": 3, "eval": 100, "rm_eval": 101}


def train_problems(stage: str, n: int) -> list[Problem]:
    return problems(n, SEEDS[stage], heldout=False)


def heldout_problems(stage: str, n: int) -> list[Problem]:
    return problems(n, SEEDS[stage], heldout=True)
