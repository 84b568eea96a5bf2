"""CLIP resume (the approximation documented in docs/results.md): model, optimizer, LR schedule, step and
RNG come back exactly from the checkpoint; the webdataset stream restarts its shuffle instead of resuming at
the exact sample."""
import torch

from test_clip_recipe import _recipe, _shards

ARGS = ["--preset", "clip-test", "--no-probe", "--ckpt-every", "2", "batch_size=8", "num_workers=0", "warmup=1",
        "img_size=28", "patch_size=7", "in_chans=1", "image_mean=(0.5,)", "image_std=(0.5,)", "context_length=32",
        "schedule_by_time=false"]


def test_resume_restores_training_state_and_continues(tmp_path):
    data, out = _shards(tmp_path), tmp_path / "run"
    _recipe().main(["--data", data, "--out", str(out), "--max-steps", "4", *ARGS])
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    metrics = _recipe().main(["--data", data, "--out", str(out), "--max-steps", "6", "--resume", str(out), *ARGS])
    assert metrics["steps"] == 6  # continued from step 4, not restarted
    after = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["global_step"] == 6
    sched = after["lr_schedulers"][0]
    assert sched["last_epoch"] == 6  # the LR schedule continued from the restored position
