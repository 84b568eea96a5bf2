"""Time budgets (`max_minutes=`, Lightning's Timer through mmfm.train.budget.time_limit) in the fine-tune and
alignment recipes: under DDP on 2 gloo processes, with rank 1's clock running 3x fast and starting late, both ranks
stop at the same step with identical weights; a killed budgeted run, resumed, gets only the rest of its budget
(the Timer's elapsed time is in the checkpoint); a bad budget is refused by name."""
import types

import lightning.pytorch.callbacks.timer as lightning_timer
import lightning as L
import pytest
import torch
from test_align_user_data import CHATS, PREFS, _recipe, base, write_jsonl  # noqa: F401 (base: a fixture)
from test_gpt_reliability import Crash
from test_labelled_data import write_image_folder
from test_train_budget import ddp_budget_run

import mmfm
from mmfm.config import ConfigError
from mmfm.train.budget import time_limit

TICK = 0.25  # fake seconds per training step (exact in binary)


def test_finetune_ddp_ranks_stop_together_under_a_time_budget(tmp_path):
    pets = write_image_folder(tmp_path / "pets", classes=("a", "b"), per_class=10)
    args = ["--init", "vit-test", "--data", str(pets), "--method", "full", "batch_size=8", "val_every=5",
            "patience=100000", "progress=false", "max_minutes=0.05"]
    _, _, metrics = ddp_budget_run(tmp_path, "finetune", args)
    assert metrics["stopped_early"] is False  # the budget stopped it, not early stopping or --max-steps


def test_sft_ddp_ranks_stop_together_under_a_time_budget(tmp_path, base):  # noqa: F811
    chats = write_jsonl(tmp_path / "chats.jsonl", CHATS)
    ddp_budget_run(tmp_path, "sft", ["--init", str(base), "--data", str(chats), "batch_size=4", "max_minutes=0.05"])


@pytest.mark.slow
def test_dpo_ddp_ranks_stop_together_under_a_time_budget(tmp_path, base):  # noqa: F811
    prefs = write_jsonl(tmp_path / "prefs.jsonl", PREFS)
    ddp_budget_run(tmp_path, "dpo", ["--init", str(base), "--data", str(prefs), "batch_size=4", "max_minutes=0.05"])


class FakeTime:
    """Stands in for the `time` module inside Lightning's Timer: TICK seconds pass at the start of each step."""
    now = 0.0

    @staticmethod
    def monotonic():
        return FakeTime.now


class Tick(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        FakeTime.now += TICK


def _sft(tmp_path, base, monkeypatch, out, *extra, crash_at=None):  # noqa: F811
    from mmfm.train import make_trainer as real  # the recipe's, unpatched (an earlier call patched the module)

    recipe = _recipe("sft")
    more = [Tick()] + ([Crash(crash_at)] if crash_at is not None else [])
    monkeypatch.setattr(recipe, "make_trainer", lambda args, callbacks=(), **kw: real(args, [*more, *callbacks], **kw))
    monkeypatch.setattr(lightning_timer, "time", types.SimpleNamespace(monotonic=FakeTime.monotonic))
    chats = write_jsonl(tmp_path / "chats.jsonl", CHATS)
    return recipe.main(["--init", str(base), "--data", str(chats), "--val-data", str(chats), "--out",
                        str(tmp_path / out), "--max-steps", "1000", "--ckpt-every", "3", "batch_size=8",
                        "max_minutes=0.05", *extra])  # 3 s: 12 steps of the fake clock; one batch holds every chat


def test_resumed_budgeted_run_gets_only_the_rest_of_its_budget(tmp_path, base, monkeypatch):  # noqa: F811
    clean = _sft(tmp_path, base, monkeypatch, "clean")
    assert clean["steps"] == 3.0 / TICK  # the budget, not --max-steps, ended the run
    with pytest.raises(RuntimeError, match="simulated crash"):
        _sft(tmp_path, base, monkeypatch, "crashed", crash_at=8)  # the last checkpoint: step 6
    ckpt = torch.load(tmp_path / "crashed" / "checkpoints" / "last.ckpt", weights_only=True)
    timer = next(v for k, v in ckpt["callbacks"].items() if k.startswith("Timer"))
    assert ckpt["global_step"] == 6 and timer["time_elapsed"]["train"] == 6 * TICK
    resumed = _sft(tmp_path, base, monkeypatch, "crashed", "--resume", str(tmp_path / "crashed"))
    assert resumed["steps"] == clean["steps"]  # a fresh budget would have trained to step 6 + 12
    a = mmfm.build_model(tmp_path / "clean" / "model").state_dict()
    b = mmfm.build_model(tmp_path / "crashed" / "model").state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "soon", True, None])
def test_time_limit_refuses_bad_budgets_by_name(bad):
    with pytest.raises(ConfigError, match="max_minutes"):
        time_limit(bad)


@pytest.mark.parametrize("recipe", ["finetune", "sft", "dpo", "reward_model", "align_pretrain"])
def test_recipes_refuse_a_negative_budget_before_training(tmp_path, recipe):
    argv = ["--out", str(tmp_path / "x"), "max_minutes=-1"]
    with pytest.raises(ConfigError, match="max_minutes"):
        _recipe(recipe).main(argv)
    assert not (tmp_path / "x").exists()


def test_zero_budget_adds_no_timer_and_a_budget_adds_lightnings():
    assert time_limit(0) == {}
    trainer = L.Trainer(**time_limit(0.5), logger=False, enable_checkpointing=False, enable_progress_bar=False)
    timer = next(c for c in trainer.callbacks if isinstance(c, lightning_timer.Timer))
    assert timer._duration == 30.0
