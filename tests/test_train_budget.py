"""The one training clock (mmfm.train.budget): ranks agree on the stop step and the schedule under DDP, and a
killed time-budgeted run, resumed, trains only the rest of its budget with the schedule continuing."""
import json
import os
import subprocess
import sys
import textwrap
import time

import lightning as L
import pytest
import torch

import mmfm
from mmfm.data.tokens import build_token_files
from mmfm.train.budget import BudgetClock

from test_gpt_reliability import ROOT, TEXT, Crash, _recipe

ARGS = ["--preset", "gpt-test", "block_size=32", "batch_size=4", "val_every=1000", "val_tokens=256",
        "final_val_tokens=512", "sample_tokens=0", "warmup_steps=2", "lr=1e-2", "dropout=0.1"]
TICK = 0.125  # fake seconds per training step (exact in binary: step counts are exact)


class Tick(L.Callback):
    """A fake clock: TICK seconds pass at the start of each training step (so the budget is exact)."""
    now = [0.0]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        Tick.now[0] += TICK


class LastLR(L.Callback):
    lr = [None]

    def on_train_end(self, trainer, pl_module):
        LastLR.lr[0] = trainer.optimizers[0].param_groups[0]["lr"]


def _run(out, data, monkeypatch, crash_at=None, resume=False):
    module = _recipe()
    real = module.make_trainer
    extra = [Tick(), LastLR()] + ([Crash(crash_at)] if crash_at is not None else [])
    monkeypatch.setattr(module, "make_trainer", lambda args, callbacks=(), **kw: real(args, [*extra, *callbacks], **kw))
    monkeypatch.setattr(BudgetClock, "_now", staticmethod(lambda: Tick.now[0]))
    argv = ["--out", str(out), "--max-steps", "1000", "--ckpt-every", "3", f"data={data}", *ARGS, "time_budget_s=2.0"]
    return module.main(argv + (["--resume", str(out)] if resume else []))


def test_clock_state_round_trips_and_resume_trains_the_rest_of_the_budget(tmp_path, monkeypatch):
    data = tmp_path / "data"
    build_token_files(TEXT, data, "char")
    clean = _run(tmp_path / "clean", data, monkeypatch)
    clean_lr = LastLR.lr[0]
    assert clean["steps"] == 2.0 / TICK  # the budget, not --max-steps, ended the run
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path / "crashed", data, monkeypatch, crash_at=8)  # last checkpoint: step 6
    ckpt = torch.load(tmp_path / "crashed" / "checkpoints" / "last.ckpt", weights_only=True)
    clock_state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("BudgetClock"))
    assert ckpt["global_step"] == 6 and clock_state["train_s"] == 6 * TICK
    resumed = _run(tmp_path / "crashed", data, monkeypatch, resume=True)
    assert resumed["steps"] == clean["steps"]  # without the saved clock: 6 + 16 steps
    assert resumed["train_s"] == pytest.approx(clean["train_s"])
    assert LastLR.lr[0] == pytest.approx(clean_lr, rel=1e-9)  # the cosine continued where it stopped
    a = mmfm.build_model(tmp_path / "clean" / "model").state_dict()
    b = mmfm.build_model(tmp_path / "crashed" / "model").state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_zero_budget_trains_for_max_steps(tmp_path):
    data = tmp_path / "data"
    build_token_files(TEXT, data, "char")
    metrics = _recipe().main(["--out", str(tmp_path / "run"), "--max-steps", "5", f"data={data}", *ARGS,
                              "time_budget_s=0"])
    assert metrics["steps"] == 5


def test_clock_excludes_validation_and_rejects_negative_budgets():
    clock, now = BudgetClock(10.0), [0.0]
    clock._now = lambda: now[0]
    clock.on_train_start(None, None)
    now[0] = 3.0
    clock.on_validation_start(None, None)
    now[0] = 5.0  # 2 s of validation
    clock.on_validation_end(None, None)
    now[0] = 6.0

    class Strategy:
        def broadcast(self, obj, src=0):
            return obj

    class Trainer:
        strategy, should_stop = Strategy(), False

    t = Trainer()
    clock.on_before_optimizer_step(t, None, None)
    clock.on_train_batch_end(t, None, None, None, 0)
    assert clock.train_s == 4.0 and clock.val_s == 2.0 and clock.fraction() == 0.4 and not t.should_stop
    now[0] = 12.0
    clock.on_before_optimizer_step(t, None, None)
    clock.on_train_batch_end(t, None, None, None, 1)
    assert t.should_stop
    with pytest.raises(ValueError, match="time budget"):
        BudgetClock(-1)


DRIVER = textwrap.dedent('''
    """Runs a recipe under DDP with rank 1's clocks (mmfm's BudgetClock, Lightning's Timer) running 3x fast and
    starting late; each rank writes its final step, learning rate and weights (and its EMA's, if any)."""
    import sys, time, importlib.util
    from pathlib import Path
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Timer
    from mmfm.train.budget import BudgetClock
    from mmfm.train.ema import EMA

    OUT = Path(sys.argv[1])

    class Report(L.Callback):
        def on_train_start(self, trainer, pl_module):
            if trainer.global_rank == 1:
                time.sleep(0.5)  # a rank that starts late
                real = BudgetClock._now
                BudgetClock._now = staticmethod(lambda: 3 * real())  # and whose clocks run fast
                elapsed = Timer.time_elapsed
                Timer.time_elapsed = lambda self, *a: 3 * elapsed(self, *a)

        def on_train_end(self, trainer, pl_module):
            ema = next((c.model.state_dict() for c in trainer.callbacks if isinstance(c, EMA)), None)
            torch.save({"step": trainer.global_step, "lr": trainer.optimizers[0].param_groups[0]["lr"],
                        "weights": pl_module.state_dict(), "ema": ema}, OUT / f"rank{trainer.global_rank}.pt")

    spec = importlib.util.spec_from_file_location("recipe_under_test", sys.argv[2])
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclasses look it up
    spec.loader.exec_module(module)
    real = module.make_trainer
    module.make_trainer = lambda args, callbacks=(), **kw: real(args, [*callbacks, Report()], **kw)
    if __name__ == "__main__":
        module.main(sys.argv[3:])
''')


def ddp_budget_run(tmp_path, recipe: str, args: list[str], timeout: int = 600) -> tuple[dict, dict, dict]:
    """`recipe` on 2 gloo processes through DRIVER (rank 1's clocks fast and late) -> (rank 0's report, rank 1's,
    metrics.json); asserts that both ranks stopped at the same step (> 0, before --max-steps) with the same
    learning rate and identical weights (and EMA weights). A hang (ranks stopping apart) fails at `timeout`, which
    leaves room for a CPU shared with other work (a CLIP run took 3 min at a load of 18 on 2 cores)."""
    out = tmp_path / "ddp"
    out.mkdir()
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(tmp_path / "driver.py"), str(out), str(ROOT / "recipes" / f"{recipe}.py"),
           "--out", str(out), "--max-steps", "100000", "--device", "cpu", "--devices", "2", "--strategy", "ddp", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")
    assert 0 < r0["step"] == r1["step"] < 100000
    assert r0["lr"] == r1["lr"]
    for part in ("weights", "ema"):
        assert (r0[part] is None) == (r1[part] is None)
        for k, v in (r0[part] or {}).items():
            assert torch.equal(v, r1[part][k]), (part, k)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == r0["step"]
    return r0, r1, metrics


def test_ddp_ranks_stop_together_with_identical_weights_under_a_time_budget(tmp_path):
    data = tmp_path / "data"
    build_token_files(TEXT, data, "char")
    _, _, metrics = ddp_budget_run(tmp_path, "gpt_pretrain", [f"data={data}", *ARGS, "time_budget_s=3"])
    assert metrics["world_size"] == 2


PACED = textwrap.dedent('''
    """Runs recipes/gpt_pretrain.py with every training step padded to PACE seconds of real time (mmfm's own
    checkpoints and clock untouched), so that its step count under a time budget does not follow the CPU's load."""
    import sys
    sys.path.insert(0, sys.argv[1])
    from test_train_budget import _paced_recipe

    if __name__ == "__main__":
        _paced_recipe().main(sys.argv[2:])
''')
PACE = 0.5  # real seconds per training step (a gpt-test step computes in well under 0.1 s, even on a loaded CPU)


class Pace(L.Callback):
    """Pads each training step to PACE seconds of real time, before the budget clock reads it."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t = time.perf_counter()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        time.sleep(max(0.0, self._t + PACE - time.perf_counter()))


def _paced_recipe():
    """recipes/gpt_pretrain.py with Pace (and LastLR) ahead of the recipe's callbacks (so ahead of its BudgetClock)."""
    module = _recipe()
    real = module.make_trainer
    module.make_trainer = lambda args, callbacks=(), **kw: real(args, [Pace(), LastLR(), *callbacks], **kw)
    return module


@pytest.mark.slow
def test_sigkilled_budgeted_run_resumed_ends_like_the_uninterrupted_one(tmp_path):
    """Real time: a 12 s budget, the process killed with SIGKILL after its checkpoint at about half of it, and
    resumed: the resumed run trains only the rest of its budget and ends within one checkpoint interval of the
    uninterrupted run's step count, at the same final learning rate (the end of the cosine). Each step is padded
    to PACE seconds (Pace), so the step counts follow the budget rather than the load of a shared CPU; the
    step-exact check with a fake clock is test_clock_state_round_trips_and_resume_trains_the_rest_of_the_budget."""
    import signal

    data, budget, every = tmp_path / "data", 12.0, 5
    build_token_files(TEXT, data, "char")
    argv = lambda out: ["--out", str(out), "--max-steps", "100000", "--ckpt-every", str(every), f"data={data}",
                        *ARGS, f"time_budget_s={budget}"]
    module = _paced_recipe()
    clean = module.main(argv(tmp_path / "clean"))
    clean_lr = LastLR.lr[0]
    assert clean["steps"] >= 3 * every, clean  # the pace held: about budget / PACE steps
    out = tmp_path / "killed"
    (tmp_path / "paced.py").write_text(PACED)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen([sys.executable, str(tmp_path / "paced.py"), str(ROOT / "tests"), *argv(out)], env=env,
                            stdout=log, stderr=log)
    half = (clean["steps"] // 2 // every) * every
    target, deadline = out / "checkpoints" / f"step{half:07d}.ckpt", time.time() + 300
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]  # still running: kill it
    time.sleep(PACE * every / 2)  # half-way to the next checkpoint: those steps are lost and trained again
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.exists() and not (out / "metrics.json").exists()
    resumed = module.main(argv(out) + ["--resume", str(out)])
    assert budget <= resumed["train_s"] < budget + 2.0, resumed  # the rest of the budget, not another whole one
    assert abs(resumed["steps"] - clean["steps"]) <= every, (resumed, clean)  # within one checkpoint interval
    assert LastLR.lr[0] == pytest.approx(clean_lr) == pytest.approx(3e-4)  # both at the end of the cosine (min_lr)
