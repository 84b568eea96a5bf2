"""Resume finds the right checkpoint (newest by recorded step, then mtime), paths kept in checkpoints follow a
moved or copied run folder, and the checksum sidecar survives a crash at any point of a save."""
import os
import shutil

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from mmfm.data.stepstream import CountCompleted, StepLoader, StepStream
from mmfm.train import make_trainer, parse_args, recipe_parser
from mmfm.train.recipe import checkpoint_to_resume
from mmfm.train.reliability import (CorruptCheckpointError, RunCheckpoint, SafeCheckpointIO,
                                    find_resume_checkpoint, verify_checkpoint)

from test_reliability import Toy, toy_batch


class LoggedToy(Toy):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train/loss", loss)
        return loss


class BestAtStart(L.Callback):
    """Records the best checkpoint path as restored, before training continues."""
    seen = []

    def on_train_start(self, trainer, pl_module):
        best = [c for c in trainer.checkpoint_callbacks if c.monitor == "train/loss"][0]
        BestAtStart.seen.append((best.best_model_path, dict(best.best_k_models)))


def _run(out, steps, resume=None):
    args = parse_args(recipe_parser("toy", "vit-test", steps, str(out)), ["--out", str(out), "--max-steps", str(steps)])
    L.seed_everything(0, verbose=False)
    stream = StepStream(lambda step, rank: toy_batch(step, rank, 0))
    trainer = make_trainer(args, callbacks=[CountCompleted(stream), BestAtStart()], ckpt_every=3,
                           best_metric="train/loss", limit_val_batches=0, enable_progress_bar=False, logger=False)
    trainer.fit(LoggedToy(), StepLoader(stream), ckpt_path=checkpoint_to_resume(resume))
    return trainer


def test_moved_run_folder_resumes_with_its_own_paths(tmp_path):
    _run(tmp_path / "old", 6)
    shutil.move(tmp_path / "old", tmp_path / "new")
    BestAtStart.seen.clear()
    trainer = _run(tmp_path / "new", 9, resume=tmp_path / "new")
    best_path, best_k = BestAtStart.seen[0]
    assert best_path == str(tmp_path / "new" / "checkpoints" / "best.ckpt")
    assert all(str(tmp_path / "new") in k for k in best_k)
    for cb in trainer.checkpoint_callbacks:
        assert str(tmp_path / "old") not in (cb.best_model_path + cb.last_model_path)
    assert os.path.isfile(trainer.checkpoint_callback.best_model_path)


def test_copied_run_folder_uses_its_own_best(tmp_path):
    _run(tmp_path / "a", 6)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    BestAtStart.seen.clear()
    _run(tmp_path / "b", 9, resume=tmp_path / "b")
    assert BestAtStart.seen[0][0] == str(tmp_path / "b" / "checkpoints" / "best.ckpt")


def test_paths_missing_in_the_new_folder_are_dropped(tmp_path):
    cb = RunCheckpoint(dirpath=tmp_path / "here", filename="best", monitor="train/loss")
    (tmp_path / "here").mkdir()
    cb.load_state_dict({"dirpath": str(tmp_path / "there"), "best_model_path": str(tmp_path / "there" / "best.ckpt"),
                        "best_model_score": torch.tensor(0.5), "best_k_models": {str(tmp_path / "there" / "x"): 1.0},
                        "kth_best_model_path": "", "kth_value": torch.tensor(1.0), "last_model_path": "",
                        "current_score": None, "monitor": "train/loss"})
    assert cb.best_model_path == "" and cb.best_k_models == {} and cb.best_model_score is None


def _fake_ckpt(path, step, mtime):
    SafeCheckpointIO().save_checkpoint({"global_step": step, "state_dict": {}}, path)
    os.utime(path, (mtime, mtime))


def test_newest_by_recorded_step_then_mtime(tmp_path):
    folder = tmp_path / "checkpoints"
    _fake_ckpt(folder / "last.ckpt", 6, 2_000_000)
    _fake_ckpt(folder / "last-v1.ckpt", 9, 1_000_000)  # a restarted run's newer last, older mtime
    _fake_ckpt(folder / "step0000009.ckpt", 9, 1_500_000)
    assert find_resume_checkpoint(tmp_path).name == "step0000009.ckpt"  # same step: the later mtime
    os.utime(folder / "last-v1.ckpt", (3_000_000, 3_000_000))
    assert find_resume_checkpoint(tmp_path).name == "last-v1.ckpt"
    (folder / "last-v1.ckpt").write_bytes((folder / "last-v1.ckpt").read_bytes()[:100])  # truncated
    assert find_resume_checkpoint(tmp_path).name == "step0000009.ckpt"


def test_sidecar_survives_a_crash_at_every_point_of_a_save(tmp_path, monkeypatch):
    import mmfm.train.reliability as rel

    path, io = tmp_path / "last.ckpt", SafeCheckpointIO()
    io.save_checkpoint({"global_step": 1}, path)
    verify_checkpoint(path)

    real_replace = os.replace

    def crash(src, dst):  # the sidecar's own atomic write goes through; the checkpoint's rename dies
        if str(dst) == str(path):
            raise KeyboardInterrupt("killed between the sidecar and the rename")
        real_replace(src, dst)

    monkeypatch.setattr(rel.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"global_step": 2}, path)
    verify_checkpoint(path)  # the old, intact file is still accepted
    assert torch.load(path, weights_only=True)["global_step"] == 1
    monkeypatch.undo()
    tmp = next(tmp_path.glob(".last.ckpt.*.tmp"))
    os.replace(tmp, path)  # had the rename happened: the new file is accepted too
    verify_checkpoint(path)
    path.write_bytes(path.read_bytes()[:50])  # and a truncated one never
    with pytest.raises(CorruptCheckpointError):
        verify_checkpoint(path)
    io.save_checkpoint({"global_step": 3}, path)  # a completed save leaves one hash
    assert len((tmp_path / "last.ckpt.sha256").read_text().split()) == 1
