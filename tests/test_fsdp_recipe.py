"""`recipes/gpt_pretrain.py --devices 2 --strategy fsdp` on the CPU (gloo): FSDP2 trains, rank 0 gathers the
full weights and writes one model; the same run under DDP ends with the same weights; a killed FSDP run
resumes from its full checkpoint to the uninterrupted run's weights; a task without FSDP support says so."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
RUN = ["--preset", "gpt-test", "time_budget_s=0", "block_size=16", "batch_size=2", "val_tokens=64",
       "sample_tokens=0", "val_every=1000", "--device", "cpu", "--devices", "2", "chunk_chars=200"]


def _text(tmp):
    words = "the a cat dog sat ran over under quick brown lazy fox river hill king lord night".split()
    docs = [" ".join(words[(i * 7 + j) % len(words)] for j in range(40)) + f" {i}." for i in range(60)]
    path = tmp / "notes.txt"
    path.write_text("\n\n".join(docs))
    return path


def _run(tmp, out, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "recipes" / "gpt_pretrain.py"), "--data", str(_text(tmp)), "--out", str(out),
           *RUN, *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=tmp)


def test_fsdp_gpt_pretrain_two_processes(tmp_path):
    proc = _run(tmp_path, tmp_path / "fsdp", "--strategy", "fsdp", "--max-steps", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "fsdp" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 3 and metrics["val_loss"] > 0
    assert "FSDP2: 2 blocks + the root sharded over 2 processes" in proc.stderr
    import mmfm

    model = mmfm.build_model(tmp_path / "fsdp" / "model")  # plain keys, full shapes, strict load
    assert model.num_params() == metrics["params"] and model.tokenizer is not None


@pytest.mark.slow
def test_fsdp_equals_ddp_and_resumes_exactly(tmp_path):
    import torch

    runs = {"ddp": ["--strategy", "ddp", "--max-steps", "4"], "fsdp": ["--strategy", "fsdp", "--max-steps", "4"],
            "cut": ["--strategy", "fsdp", "--max-steps", "2", "--ckpt-every", "2"]}
    for name, extra in runs.items():
        proc = _run(tmp_path, tmp_path / name, *extra)
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
    proc = _run(tmp_path, tmp_path / "cut", "--strategy", "fsdp", "--max-steps", "4", "--resume", str(tmp_path / "cut"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp, fsdp, resumed = (load_file(tmp_path / n / "model" / "model.safetensors") for n in ("ddp", "fsdp", "cut"))
    for k, w in ddp.items():
        torch.testing.assert_close(fsdp[k], w, atol=1e-5, rtol=1e-4, msg=k)
        torch.testing.assert_close(resumed[k], fsdp[k], atol=1e-6, rtol=1e-5, msg=k)


def test_unsupported_task_refuses_fsdp_clearly():
    import lightning as L

    from mmfm.config import ConfigError
    from mmfm.train.strategies import build_strategy

    strategy = build_strategy("fsdp", devices=1)

    class Plain(L.LightningModule):
        pass

    strategy._lightning_module = Plain()
    with pytest.raises(ConfigError, match="--strategy fsdp is not supported by Plain"):
        strategy.setup(trainer=None)
