"""Resume in the middle of an epoch of a map-style loader (a user's CLIP pairs, a user's preference JSONL): the
resumed run trains on the batches the uninterrupted run trained on after the checkpoint, not on the epoch's
first batches again, so it ends with the same weights. One process; the killed run exits at once, without
cleanup, right after a checkpoint that lies mid-epoch (after the first step of the second epoch)."""
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_align_user_data import PREFS, base, write_jsonl  # noqa: F401 (base: a fixture)
from test_clip_user_data import MODEL as CLIP_TINY
from test_clip_user_data import _csv
from test_fsdp_resume import run_recipe

from mmfm.data.stepstream import resumable_loader

ROOT = Path(__file__).resolve().parents[1]


def _args(name: str, tmp: Path, base_model: Path) -> list[str]:
    if name == "clip_pretrain":  # 10 pairs, 2 held out: 8 = 2 batches of 4 per epoch
        return ["--data", str(_csv(tmp / "data" / "pairs.csv", n=10)), *CLIP_TINY]
    prefs = write_jsonl(tmp / "prefs.jsonl", PREFS)  # 8 pairs, 1 held out: 7 -> 3 batches of 2 per epoch
    return ["--init", str(base_model), "--data", str(prefs), "batch_size=2", "warmup=1", "lr=1e-3"]


@pytest.mark.slow
@pytest.mark.parametrize("name,kill_at", [("clip_pretrain", 3), ("dpo", 4)])  # the first step of epoch 1 done
def test_resume_mid_epoch_continues_the_epoch(tmp_path, base, name, kill_at):  # noqa: F811
    recipe, args = str(ROOT / "recipes" / f"{name}.py"), _args(name, tmp_path, base)

    def run(out, *extra, kill_at=None):
        return run_recipe(tmp_path, recipe, out, "--max-steps", "5", "--ckpt-every", "1", *args, *extra,
                          kill_at=kill_at)

    assert (proc := run("whole")).returncode == 0, proc.stderr[-3000:]
    assert (proc := run("cut", kill_at=kill_at)).returncode == 9, proc.stderr[-3000:]
    assert (tmp_path / "cut" / "checkpoints" / f"step{kill_at:07d}.ckpt").is_file()
    assert (proc := run("cut", "--resume", str(tmp_path / "cut"))).returncode == 0, proc.stderr[-3000:]
    whole, resumed = (load_file(tmp_path / n / "model" / "model.safetensors") for n in ("whole", "cut"))
    worst = max((resumed[k] - w).abs().max().item() for k, w in whole.items())
    assert worst <= 1e-6, f"resumed != uninterrupted (largest difference {worst:.2e})"


def _epoch(loader, epoch):
    loader.sampler.set_epoch(epoch)  # what Lightning does before each epoch
    return [b.tolist() for b in loader]


def test_resumable_loader_state_continues_the_epoch_or_starts_the_next():
    data = list(range(12))
    whole = resumable_loader(data, 4, seed=3)
    epochs = [_epoch(whole, e) for e in range(3)]
    assert epochs[0] != epochs[1] and sorted(sum(epochs[1], [])) == data  # a new order each epoch, every item once
    assert _epoch(resumable_loader(data, 4, seed=3), 1) == epochs[1]  # the order is a function of (seed, epoch)
    for done in (1, 3):  # mid-epoch, and after the epoch's last batch
        cut = resumable_loader(data, 4, seed=3)
        cut.sampler.set_epoch(1)
        it = iter(cut)
        for _ in range(done):
            next(it)
        state = cut.state_dict()
        resumed = resumable_loader(data, 4, seed=3)  # a new process: fresh sampler, the checkpoint's state
        resumed.load_state_dict(state)
        rest = [b.tolist() for b in resumed]
        assert rest == (epochs[1][done:] if done < 3 else epochs[2])
