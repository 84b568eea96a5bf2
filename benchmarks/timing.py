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


def matmul_gflops(n: int = 1024, dtype=None, reps: int = 5) -> float:
    """The best fp32 (or `dtype`) GFLOP/s of an n x n x n matmul over `reps` runs: the peak the MFU is read against."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9
