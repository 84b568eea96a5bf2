"""`--devices 2 --strategy fsdp` through every training recipe but GPT's (tests/test_fsdp_recipe.py) on 2 CPU
processes (gloo), a few steps at *-test sizes: each trains with its models sharded by FSDP2 (frozen ones
replicated, the DiT's EMA a full copy per rank), rank 0 gathers the full weights, evaluates, and alone writes one
loadable model folder. The gradient equality of the tasks is tests/test_fsdp_tasks.py; these are smoke runs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_align_user_data import CHATS, PREFS, PROMPTS, base, write_jsonl  # noqa: F401 (base: a fixture)
from test_clip_user_data import MODEL as CLIP_TINY
from test_clip_user_data import _csv
from test_labelled_data import write_image_folder

import mmfm

ROOT = Path(__file__).resolve().parents[1]


def _args(name: str, tmp: Path, base_model: Path) -> list[str]:
    """The recipe's arguments for a tiny run (its data written under tmp)."""
    if name == "dit_train":
        return ["--preset", "dit-test", "input_size=28", "depth=1", "max_minutes=0", "batch_size=8", "limit=32",
                "classifier=none", "sample_every=0", "sample_steps=2"]
    if name == "vit_classify":
        return ["--preset", "vit-test", "datasets=digits", "limit=32", "batch_size=8"]
    if name == "finetune":
        pets = write_image_folder(tmp / "pets", classes=("a", "b"), per_class=10)
        return ["--init", "vit-test", "--data", str(pets), "--method", "lora", "val_every=1", "batch_size=8",
                "progress=false"]
    if name == "clip_pretrain":
        return ["--data", str(_csv(tmp / "data" / "pairs.csv", n=16)), *CLIP_TINY]
    records = {"sft": CHATS, "dpo": PREFS, "reward_model": PREFS, "ppo": PROMPTS}[name]
    data = ["--data", str(write_jsonl(tmp / "data.jsonl", records))]
    init = ["--sft" if name == "reward_model" else "--init", str(base_model)]
    if name == "ppo":
        return [*init, *data, "reward=mmfm.align.rewards:format_reward", "prompts_per_step=4", "minibatch=4",
                "max_new=4", "epochs=1"]
    return [*init, *data, "batch_size=4"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dit_train", "finetune", "vit_classify", "clip_pretrain", "sft", "dpo",
                                  "reward_model", "ppo"])
def test_recipe_trains_under_fsdp_on_two_processes(tmp_path, base, name):  # noqa: F811
    out = tmp_path / "fsdp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "recipes" / f"{name}.py"), "--out", str(out), "--max-steps", "2",
           "--device", "cpu", "--devices", "2", "--strategy", "fsdp", *_args(name, tmp_path, base)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "sharded over 2 processes" in log, log[-2000:]
    assert log.count("final metrics:") == 1  # rank 0 alone evaluates and writes
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2
    assert (out / "model" / "config.json").is_file() and mmfm.build_model(out / "model").num_params() > 0
