"""Timing shared by the benchmarks: peers alternate round by round and each keeps its best round."""
from __future__ import annotations

import time


def best_rate(runners: dict, work: float, rounds: int) -> dict:
    """runners: name -> callable doing `work` units. Returns name -> best units/s over `rounds` rounds,
    the peers alternating inside each round, so that a noisy stretch of a shared CPU hits all of them."""
    best = {name: 0.0 for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            best[name] = max(best[name], work / (time.perf_counter() - start))
    return best
