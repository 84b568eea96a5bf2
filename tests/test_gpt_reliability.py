"""The GPT recipe survives a crash: resumed from its last checkpoint it ends bit-for-bit (1e-6) where an
uninterrupted run ends; it runs under Lightning DDP on 2 CPU processes (gloo)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

import mmfm
from mmfm.data.tokens import build_token_files

ROOT = Path(__file__).resolve().parents[1]
TEXT = "".join(f"KING:\nMy lord {i}, the night is {'dark' if i % 3 else 'long'}.\n\n" for i in range(300))
ARGS = ["--preset", "gpt-test", "block_size=32", "batch_size=4", "val_every=1000", "val_tokens=256",
        "final_val_tokens=512", "sample_tokens=0", "warmup_steps=2", "lr=1e-2", "time_budget_s=0", "dropout=0.1"]


def _recipe():
    spec = importlib.util.spec_from_file_location("recipe_gpt_pretrain_rel", ROOT / "recipes" / "gpt_pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Crash(L.Callback):
    """Dies like a killed process at the start of step `at` (after the checkpoint of step at-1)."""

    def __init__(self, at):
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at:
            raise RuntimeError("simulated crash")


def _run(out, data, steps, crash_at=None, resume=False, monkeypatch=None):
    module = _recipe()
    if crash_at is not None:
        real = module.make_trainer
        monkeypatch.setattr(module, "make_trainer",
                            lambda args, callbacks=(), **kw: real(args, [*callbacks, Crash(crash_at)], **kw))
    argv = ["--out", str(out), "--max-steps", str(steps), "--ckpt-every", "3", f"data={data}", *ARGS]
    return module.main(argv + (["--resume", str(out)] if resume else []))


def test_crash_and_resume_equals_uninterrupted(tmp_path, monkeypatch):
    data = tmp_path / "data"
    build_token_files(TEXT, data, "char")
    clean = _run(tmp_path / "clean", data, 10)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path / "crashed", data, 10, crash_at=7, monkeypatch=monkeypatch)
    assert not (tmp_path / "crashed" / "metrics.json").exists()
    resumed = _run(tmp_path / "crashed", data, 10, resume=True)
    assert resumed["steps"] == clean["steps"] == 10
    a = mmfm.build_model(tmp_path / "clean" / "model").state_dict()
    b = mmfm.build_model(tmp_path / "crashed" / "model").state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    assert abs(resumed["val_loss"] - clean["val_loss"]) < 1e-6


def test_ddp_two_cpu_processes(tmp_path):
    data, out = tmp_path / "data", tmp_path / "ddp"
    build_token_files(TEXT, data, "char")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "recipes" / "gpt_pretrain.py"), "--out", str(out), "--max-steps", "4",
           "--device", "cpu", "--devices", "2", "--strategy", "ddp", f"data={data}", *ARGS]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["world_size"] == 2
    assert metrics["tokens_seen"] == 4 * 4 * 32 * 2  # both ranks' batches count
