"""The DiT recipe under Lightning DDP on 2 CPU processes (gloo) with its time budget: it finishes, the ranks
stop together at the budget's step (a rank stopping alone would hang the other in the gradient all-reduce),
and rank 0 alone evaluates and writes; the checkpoint holds each rank's own RNG state."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import mmfm

ROOT = Path(__file__).resolve().parents[1]


def test_dit_ddp_two_cpu_processes_with_time_budget(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "recipes" / "dit_train.py"), "--out", str(out), "--device", "cpu",
           "--devices", "2", "--strategy", "ddp", "--preset", "dit-test", "input_size=28", "depth=1",
           "--max-steps", "100000", "max_minutes=0.03", "batch_size=8", "limit=32", "classifier=none",
           "sample_every=0", "sample_steps=2", "--ckpt-every", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert 1 <= metrics["steps"] < 100000  # the 1.8 s budget stopped both ranks, at the same step
    assert log.count("final metrics:") == 1 and log.count("metrics.json") == 1, log[-3000:]  # rank 0 alone
    assert "classifier=none" in log and not any(k.startswith("cond_accuracy") for k in metrics)
    assert mmfm.build_model(out / "model").config.depth == 1 and (out / "samples.png").is_file()
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    rng = next(v for k, v in ckpt["callbacks"].items() if k.startswith("RNGState"))
    assert len(rng["ranks"]) == 2 and not torch.equal(rng["ranks"][0]["torch"], rng["ranks"][1]["torch"])
