"""The precision `--precision auto` picks on the CPU: bf16-mixed where the processor has native bf16 matrix
units (Intel AMX: the `amx_bf16` CPU flag) and a short matmul probe confirms bf16 is faster than fp32 here;
32-true elsewhere (without AMX, bf16 matmuls on a CPU run 10-150x slower than fp32)."""
from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MIN_SPEEDUP = 1.5  # bf16 must beat fp32 by this much in the probe (AMX machines measure 5-6x)
CPUINFO = "/proc/cpuinfo"


def cpu_flags(cpuinfo: str | Path) -> set[str]:
    """The processor's feature flags (empty where /proc/cpuinfo is missing, as on macOS and Windows)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


def matmul_seconds(dtype: torch.dtype, n: int = 512, reps: int = 3) -> float:
    """Best time of an n x n x n matmul in `dtype` on the CPU over `reps` runs (after one warm-up)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return best


def bf16_speedup() -> float:
    """fp32 time / bf16 time of the probe matmul."""
    return matmul_seconds(torch.float32) / matmul_seconds(torch.bfloat16)


@functools.lru_cache(maxsize=1)
def auto_cpu_precision() -> str:
    """'bf16-mixed' on a CPU with AMX bf16 units where the probe finds bf16 at least MIN_SPEEDUP x faster,
    else '32-true'. Decided once per process and logged."""
    if "amx_bf16" not in cpu_flags(CPUINFO):
        log.info("precision auto on the CPU: 32-true (no amx_bf16 in the CPU flags)")
        return "32-true"
    speedup = bf16_speedup()
    choice = "bf16-mixed" if speedup >= MIN_SPEEDUP else "32-true"
    log.info("precision auto on the CPU: %s (AMX present; bf16 matmul probe %.1fx fp32, needs %.1fx)",
             choice, speedup, MIN_SPEEDUP)
    return choice
