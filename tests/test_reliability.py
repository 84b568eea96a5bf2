"""Crash safety and exact resume of the shared training machinery (on a toy ViT task)."""
import pickle

import lightning as L
import pytest
import torch
import torch.nn.functional as F

import mmfm
from mmfm.data.stepstream import CountCompleted, StepLoader, StepStream, step_generator
from mmfm.train import make_trainer, parse_args, recipe_parser
from mmfm.train.reliability import (CorruptCheckpointError, NonFiniteLossError, SafeCheckpointIO,
                                    find_resume_checkpoint, verify_checkpoint)
from mmfm.train.recipe import checkpoint_to_resume


def toy_batch(step, rank, seed=0):
    x = torch.randn(8, 1, 32, 32, generator=step_generator(seed, step, rank))
    return x, (x.mean(dim=(1, 2, 3)) > 0).long()


class Toy(L.LightningModule):
    def __init__(self, nan_at=None):
        super().__init__()
        self.model = mmfm.build_model("vit-test", in_chans=1, num_classes=2, dropout=0.1)
        self.losses, self.nan_at = {}, nan_at

    def training_step(self, batch, _):
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        if self.nan_at is not None and self.global_step == self.nan_at:
            loss = loss * float("nan")
        self.losses[self.global_step] = loss.item()
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=3e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 5) * 0.97**s)
        return [opt], [{"scheduler": sched, "interval": "step"}]


def run(out, steps, resume=None, nan_at=None, seed=0):
    args = parse_args(recipe_parser("toy", "vit-test", steps, str(out)),
                      ["--out", str(out), "--max-steps", str(steps), "--seed", str(seed)])
    L.seed_everything(seed, verbose=False)
    task = Toy(nan_at)
    stream = StepStream(lambda step, rank: toy_batch(step, rank, seed))
    trainer = make_trainer(args, callbacks=[CountCompleted(stream)], ckpt_every=3, keep_last=2,
                           limit_val_batches=0, enable_progress_bar=False, logger=False)
    trainer.fit(task, StepLoader(stream), ckpt_path=checkpoint_to_resume(resume))
    return task.losses


def test_resume_equals_uninterrupted(tmp_path):
    full = run(tmp_path / "a", 9)
    first = run(tmp_path / "b", 6)
    resumed = run(tmp_path / "b", 9, resume=tmp_path / "b")
    assert sorted(resumed) == [6, 7, 8]
    for step in range(6):
        assert abs(first[step] - full[step]) < 1e-6
    for step in (6, 7, 8):
        assert abs(resumed[step] - full[step]) < 1e-6, (step, resumed[step], full[step])


def test_keeps_last_k_and_falls_back_from_corrupt(tmp_path, caplog):
    run(tmp_path, 9)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert names == ["last.ckpt", "step0000006.ckpt", "step0000009.ckpt"]
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated by a crash mid-copy
    with pytest.raises(CorruptCheckpointError, match="corrupted or truncated"):
        verify_checkpoint(last)
    chosen = find_resume_checkpoint(tmp_path)
    assert chosen.name == "step0000009.ckpt" and "trying the previous checkpoint" in caplog.text


def test_non_finite_loss_stops_and_names_step(tmp_path):
    with pytest.raises(NonFiniteLossError, match="at step 4.*last good checkpoint"):
        run(tmp_path, 9, nan_at=4)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_resume_without_checkpoints_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        find_resume_checkpoint(tmp_path)


class Boom:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned",))


def test_malicious_pickles_never_execute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = mmfm.build_model("gpt-test")
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "pytorch_model.bin").write_bytes(pickle.dumps(Boom()))  # placed beside the real files
    loaded = mmfm.build_model(tmp_path / "m")
    assert torch.equal(loaded.wte.weight, model.wte.weight)
    bad = tmp_path / "evil.ckpt"
    torch.save({"x": Boom()}, bad)
    with pytest.raises(CorruptCheckpointError):
        verify_checkpoint(bad)
    with pytest.raises(Exception):
        SafeCheckpointIO().load_checkpoint(bad)
    assert not (tmp_path / "pwned").exists()


def test_bad_sample_fraction_stops_the_run():
    from mmfm.train.clip import TooManyBadSamples, check_bad_fraction

    check_bad_fraction(bad=4, good=96, limit=0.05)  # 4% is tolerated
    check_bad_fraction(bad=50, good=10, limit=0.05, min_seen=100)  # too few seen to judge
    with pytest.raises(TooManyBadSamples, match="6 of 100 samples"):
        check_bad_fraction(bad=6, good=94, limit=0.05)
