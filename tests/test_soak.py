"""Fault-injection soak (slow, outside CI: `python -m pytest -m slow tests/test_soak.py`).

One GPT recipe run suffers, in turn: a NaN loss injected once (the run stops naming the step), a kill -9
of the process mid-run, and a truncated last checkpoint; each time it is resumed with --resume. It must
end with the same weights and final metrics as a clean run. CLIP's part (undecodable samples skipped and
counted, a run stopped past max_bad_fraction) is covered in tests/test_clip_data.py and test_reliability.py.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import mmfm
from mmfm.data.tokens import build_token_files
from mmfm.train.reliability import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]
TEXT = "".join(f"QUEEN:\nGood night {i}, sweet {'prince' if i % 2 else 'lady'}.\n\n" for i in range(600))
STEPS = 60


def _argv(out, data):
    return ["--out", str(out), "--max-steps", str(STEPS), "--ckpt-every", "5", "--preset", "gpt-test",
            f"data={data}", "block_size=64", "batch_size=8", "val_every=1000", "val_tokens=512",
            "final_val_tokens=2048", "sample_tokens=0", "warmup_steps=5", "lr=3e-3", "time_budget_s=0",
            "dropout=0.1"]


def _main(argv):
    import importlib.util

    spec = importlib.util.spec_from_file_location("soak_gpt_pretrain", ROOT / "recipes" / "gpt_pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


@pytest.mark.slow
def test_soak_nan_kill_corruption_end_like_clean_run(tmp_path, monkeypatch):
    data = tmp_path / "data"
    build_token_files(TEXT, data, "char")
    clean = _main(_argv(tmp_path / "clean", data))
    out = tmp_path / "faulty"

    # 1. a NaN loss, once, at step 12: the run stops before the update, naming the step
    from mmfm.train.lm import LMTask

    real_step, fired = LMTask.training_step, []

    def nan_once(self, batch, batch_idx):
        loss = real_step(self, batch, batch_idx)
        if self.global_step == 12 and not fired:
            fired.append(True)
            return loss * float("nan")
        return loss

    monkeypatch.setattr(LMTask, "training_step", nan_once)
    with pytest.raises(NonFiniteLossError, match="at step 12"):
        _main(_argv(out, data))
    monkeypatch.setattr(LMTask, "training_step", real_step)

    # 2. resume in a separate process and kill -9 it once a later checkpoint exists
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # same thread count as this process: same float sums
    proc = subprocess.Popen([sys.executable, str(ROOT / "recipes" / "gpt_pretrain.py"), *_argv(out, data),
                             "--resume", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = out / "checkpoints" / "step0000030.ckpt"
    deadline = time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.exists() and not (out / "metrics.json").exists()

    # 3. the newest checkpoint is truncated as by a crash mid-copy; resume falls back to the previous one
    last = out / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:4096])
    resumed = _main(_argv(out, data) + ["--resume", str(out)])

    assert resumed["steps"] == clean["steps"] == STEPS
    assert abs(resumed["val_loss"] - clean["val_loss"]) < 1e-6
    a = mmfm.build_model(tmp_path / "clean" / "model").state_dict()
    b = mmfm.build_model(out / "model").state_dict()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-6, worst
