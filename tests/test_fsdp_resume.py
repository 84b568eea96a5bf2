"""Resume from an FSDP checkpoint beyond GPT (tests/test_fsdp_recipe.py): `--devices 2 --strategy fsdp` runs of
clip_pretrain and dpo on 2 gloo processes, killed (every rank exits at once, no cleanup) one step after their
checkpoint and resumed with `--resume`, end with the weights of the uninterrupted run. Each rank's data is one
batch per epoch, so the resumed run sees the same batches (Lightning's DistributedSampler is seeded per epoch)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_align_user_data import PREFS, base, write_jsonl  # noqa: F401 (base: a fixture)
from test_clip_user_data import MODEL as CLIP_TINY
from test_clip_user_data import _csv

ROOT = Path(__file__).resolve().parents[1]
KILL = textwrap.dedent('''
    """Runs a recipe whose every rank exits at the start of step AT (a killed job: no cleanup, no last checkpoint)."""
    import importlib.util, os, sys
    import lightning as L

    AT = int(sys.argv[2])

    class Kill(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == AT:
                os._exit(9)

    spec = importlib.util.spec_from_file_location("recipe_under_test", sys.argv[1])
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # its dataclasses look it up
    spec.loader.exec_module(module)
    real = module.make_trainer
    module.make_trainer = lambda args, callbacks=(), **kw: real(args, [*callbacks, Kill()], **kw)
    if __name__ == "__main__":
        module.main(sys.argv[3:])
''')


def run_recipe(tmp: Path, recipe: str, out: str, *args: str, kill_at: int | None = None):
    """The recipe in a subprocess with 1 OpenMP thread (exactness needs the same thread count in every run);
    with kill_at, through KILL (tmp/kill.py), every rank exiting at once at the start of that step."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    (tmp / "kill.py").write_text(KILL)
    head = [str(tmp / "kill.py"), recipe, str(kill_at)] if kill_at is not None else [recipe]
    cmd = [sys.executable, *head, "--out", str(tmp / out), "--device", "cpu", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=tmp)


def _args(name: str, tmp: Path, base_model: Path) -> list[str]:
    if name == "clip_pretrain":  # 10 pairs, 2 held out: 4 per rank, one batch of 4
        return ["--data", str(_csv(tmp / "data" / "pairs.csv", n=10)), *CLIP_TINY]
    prefs = write_jsonl(tmp / "prefs.jsonl", PREFS)  # 8 pairs, 1 held out: 4 per rank (the sampler pads)
    return ["--init", str(base_model), "--data", str(prefs), "batch_size=4", "warmup=1", "lr=1e-3"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["clip_pretrain", "dpo"])
def test_killed_fsdp_run_resumes_to_the_uninterrupted_weights(tmp_path, base, name):  # noqa: F811
    recipe, args = str(ROOT / "recipes" / f"{name}.py"), _args(name, tmp_path, base)

    def run(out, *extra, kill_at=None):
        return run_recipe(tmp_path, recipe, out, "--max-steps", "4", "--ckpt-every", "2", "--devices", "2",
                          "--strategy", "fsdp", *args, *extra, kill_at=kill_at)

    proc = run("whole")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sharded over 2 processes" in proc.stdout + proc.stderr
    proc = run("cut", kill_at=3)
    assert proc.returncode == 9, proc.stderr[-3000:]
    cut = tmp_path / "cut"
    assert (cut / "checkpoints" / "step0000002.ckpt").is_file() and not (cut / "model").exists()
    saved = torch.load(cut / "checkpoints" / "step0000002.ckpt", weights_only=True)["state_dict"]
    at_2 = {k.split(".", 1)[1]: v for k, v in saved.items()}  # "model." / "policy." prefix off
    proc = run("cut", "--resume", str(cut))
    assert proc.returncode == 0, proc.stderr[-3000:]
    whole, resumed = (load_file(tmp_path / n / "model" / "model.safetensors") for n in ("whole", "cut"))
    assert whole.keys() == resumed.keys()
    # assert_close's test (|r - w| <= 1e-6 + 1e-5 |w|) over every tensor, reporting the worst ones when it fails
    excess = sorted((((resumed[k] - w).abs() - 1e-5 * w.abs()).max().item(), k) for k, w in whole.items())[::-1]
    moved = {k: (whole[k] - at_2[k]).abs().max().item() for k in whole if k in at_2}
    assert excess[0][0] <= 1e-6, "resumed != uninterrupted; worst (|diff| - 1e-5 |w|, and how far steps 3-4 moved " \
        "the tensor): " + ", ".join(f"{k} {d:.2e} ({moved.get(k, float('nan')):.2e})" for d, k in excess[:5])
    # steps 3 and 4 changed the weights after the checkpoint (so the equality above is not of untouched weights)
    assert max((whole[k] - at_2[k]).abs().max().item() for k in whole if k in at_2) > 1e-5
