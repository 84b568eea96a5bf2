"""recipes/gpt_pretrain.py end to end on a tiny temp corpus with gpt-test; recipes/generate.py on its output."""
import importlib.util
import json
import math
from pathlib import Path

import mmfm
from mmfm.data.tokens import build_token_files

ROOT = Path(__file__).resolve().parents[1]
TEXT = "".join(f"KING:\nMy lord {i}, the night is {'dark' if i % 2 else 'long'}.\n\n" for i in range(400))


def _load(name):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pretrain_recipe_end_to_end(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "run"
    build_token_files(TEXT, data, "char")
    metrics = _load("gpt_pretrain").main([
        "--out", str(out), "--max-steps", "8", "--preset", "gpt-test", f"data={data}", "block_size=32",
        "batch_size=4", "val_every=4", "val_tokens=256", "sample_tokens=20", "warmup_steps=2", "lr=1e-2"])
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("val_loss", "tokens_seen", "tokens_per_s", "wall_s", "target_val_loss", "reached_target",
                "train_s", "final_val_s"):
        assert key in saved
    assert saved["tokens_seen"] == 8 * 4 * 32 and saved["steps"] == 8
    model = mmfm.build_model(out / "model")
    assert saved["val_loss"] < math.log(model.config.vocab_size)  # learned something: below uniform
    assert (out / "loss.png").stat().st_size > 1000
    assert model.tokenizer is not None and model.config.block_size == 32
    assert metrics["val_loss"] == saved["val_loss"]

    capsys.readouterr()
    _load("generate").main([str(out / "model"), "--prompt", "KING:\n", "--max-new-tokens", "12", "--temperature", "0"])
    printed = capsys.readouterr().out
    assert printed.startswith("KING:\n") and len(printed) >= len("KING:\n") + 12


def test_time_budget_stops_training_and_completes_the_schedule(tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    build_token_files(TEXT, data, "char")
    metrics = _load("gpt_pretrain").main([
        "--out", str(out), "--max-steps", "100000", "--preset", "gpt-test", f"data={data}", "block_size=16",
        "batch_size=2", "val_every=1000", "val_tokens=64", "final_val_tokens=256", "sample_tokens=0",
        "time_budget_s=2.0"])
    assert 0 < metrics["steps"] < 100000 and metrics["train_s"] < 10


def test_cosine_schedule():
    from mmfm.train.optim import warmup_cosine

    assert warmup_cosine(10, 100, 0.1)(0) == 0.1  # warmup starts at lr / warmup
    assert warmup_cosine(10, 100, 0.1)(9) == 1.0
    assert abs(warmup_cosine(10, 100, 0.1)(100) - 0.1) < 1e-9
    assert abs(warmup_cosine(10, 100, 0.1, progress=lambda: 1.0)(20) - 0.1) < 1e-9  # a spent time budget ends it
