"""Shared training core: guards that agree across ranks, precision choice, compile, rank-0-only outputs, the
budget progress bar and the silenced first-run noise."""
import json
import logging
import os
import subprocess
import sys
import textwrap
import warnings
from types import SimpleNamespace

import pytest
import torch

import mmfm
from mmfm.config import ConfigError
from mmfm.train import finish, parse_args, recipe_parser, resolve_accelerator, write_metrics
from mmfm.train.budget import BudgetClock, BudgetProgressBar

from test_gpt_reliability import ROOT

GUARD_DRIVER = textwrap.dedent('''
    """Two DDP processes; rank 1 alone sees a NaN loss at step 2. Each rank writes the error it stopped with."""
    import sys
    from pathlib import Path
    import lightning as L
    import torch
    from mmfm.data.stepstream import CountCompleted, StepLoader, StepStream
    from mmfm.train import make_trainer, parse_args, recipe_parser
    from test_reliability import Toy, toy_batch

    OUT = Path(sys.argv[1])

    class NanOnRank1(Toy):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if self.global_step == 2 and self.global_rank == 1 else loss

    class Record(L.Callback):
        def on_exception(self, trainer, pl_module, exception):
            (OUT / f"rank{trainer.global_rank}.txt").write_text(f"{type(exception).__name__}: {exception}")

    if __name__ == "__main__":
        args = parse_args(recipe_parser("toy", "vit-test", 6, str(OUT)),
                          ["--out", str(OUT), "--max-steps", "6", "--device", "cpu", "--devices", "2",
                           "--strategy", "ddp"])
        L.seed_everything(0, verbose=False)
        stream = StepStream(lambda step, rank: toy_batch(step, rank, 0))
        trainer = make_trainer(args, callbacks=[CountCompleted(stream), Record()], ckpt_every=100,
                               limit_val_batches=0, enable_progress_bar=False, logger=False)
        trainer.fit(NanOnRank1(), StepLoader(stream))
''')


def test_non_finite_loss_on_one_rank_stops_every_rank_with_the_same_message(tmp_path):
    (tmp_path / "driver.py").write_text(GUARD_DRIVER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
    proc = subprocess.run([sys.executable, str(tmp_path / "driver.py"), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)  # a hang fails here
    assert proc.returncode != 0
    r0, r1 = (tmp_path / "rank0.txt").read_text(), (tmp_path / "rank1.txt").read_text()
    assert r0 == r1 and r0.startswith("NonFiniteLossError: non-finite loss at step 2"), (r0, r1)


class _SumStrategy:
    """A stand-in for a 2-rank strategy: the other rank reports `other` (bad, good) counts."""

    def __init__(self, other):
        self.other = torch.tensor(other, dtype=torch.float64)

    def reduce(self, t, reduce_op="sum"):
        return t + self.other


def test_bad_fraction_decided_on_counts_of_every_rank():
    from mmfm.train.clip import ClipTask, ClipTrain, TooManyBadSamples

    task = ClipTask(mmfm.build_model("clip-test"), ClipTrain(), 10)
    task.samples_seen, task.skipped = 100, {0: 1}  # this rank alone: 1% bad, fine
    task._trainer = SimpleNamespace(strategy=_SumStrategy([0, 0]))
    task._check_bad()
    task._trainer = SimpleNamespace(strategy=_SumStrategy([30, 70]))  # the other rank: 30% bad
    with pytest.raises(TooManyBadSamples, match="31 of 201 samples"):
        task._check_bad()


def test_precision_choice(monkeypatch):
    monkeypatch.setattr("mmfm.train.precision.auto_cpu_precision", lambda: "32-true")  # an fp32 CPU
    assert resolve_accelerator("cpu") == ("cpu", "32-true")
    assert resolve_accelerator("auto", "bf16-mixed") == ("cpu", "bf16-mixed")
    assert resolve_accelerator("cpu", "32") == ("cpu", "32-true")
    with pytest.raises(ConfigError, match="--precision 'fp8'"):
        resolve_accelerator("cpu", "fp8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_accelerator("auto") == ("gpu", "16-mixed")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_accelerator("cuda") == ("gpu", "bf16-mixed")
    args = parse_args(recipe_parser("t", "gpt-test", 1, "out"), ["--precision", "bf16-true"])
    assert args.precision == "bf16-true"
    with pytest.raises(SystemExit):
        parse_args(recipe_parser("t", "gpt-test", 1, "out"), ["--precision", "float16"])


def test_compile_flag_wraps_the_forward():
    from mmfm.train.lm import LMTask, LMTrainConfig

    task = LMTask(mmfm.build_model("gpt-test"), LMTrainConfig(compile=True, time_budget_s=0), 10)
    assert task._compiled_call_impl is not None
    plain = LMTask(mmfm.build_model("gpt-test"), LMTrainConfig(time_budget_s=0), 10)
    assert plain._compiled_call_impl is None


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    model = mmfm.build_model("gpt-test")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    finish(SimpleNamespace(out=str(tmp_path)), model, {"x": 1})
    write_metrics(tmp_path, {"y": 2}, name="other.json")
    assert not any(tmp_path.iterdir())
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    finish(SimpleNamespace(out=str(tmp_path)), model, {"x": 1})
    assert json.loads((tmp_path / "metrics.json").read_text())["x"] == 1 and (tmp_path / "model").is_dir()


def test_progress_bar_shows_the_budget(monkeypatch):
    from lightning.pytorch.callbacks import TQDMProgressBar

    clock = BudgetClock(540.0)
    clock.train_s = 192.0
    bar = BudgetProgressBar()
    monkeypatch.setattr(TQDMProgressBar, "get_metrics", lambda self, t, m: {"loss": "1.0"})  # Lightning's items
    assert bar.get_metrics(SimpleNamespace(callbacks=[clock, bar]), None) == {"loss": "1.0", "budget": "3:12/9:00"}
    assert "budget" not in bar.get_metrics(SimpleNamespace(callbacks=[BudgetClock(0), bar]), None)


def test_first_run_noise_is_silenced(caplog):
    from lightning.pytorch.utilities import rank_zero

    from mmfm.train.recipe import quiet_lightning

    quiet_lightning()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_lightning()  # its filters go in front of the default one
        from lightning.pytorch.utilities._pytree import _tree_flatten

        _tree_flatten(1.0)  # builds a LeafSpec
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
    with caplog.at_level(logging.INFO):
        rank_zero.rank_zero_info("Tip: try installing [litlogger](https://pypi.org/project/litlogger/)")
        rank_zero.rank_zero_info("GPU available: False")
    assert "litlogger" not in caplog.text and "GPU available" in caplog.text
