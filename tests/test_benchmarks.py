"""The benchmark scripts run end to end at toy sizes (their timings are not checked here)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_gpt_benchmark_smoke():
    import gpt

    r = gpt.main(["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--batch-size", "2", "--block-size", "16",
                  "--train-steps", "1", "--new-tokens", "8", "--rounds", "1"])
    assert r["same_greedy_tokens"] and r["new_tokens_each"] == [8, 8]
    assert r["train_ratio"] > 0 and r["generate_ratio"] > 0


def test_dit_benchmark_smoke():
    import dit

    (row,) = dit.main(["--configs", "dit-test", "--train-iters", "1", "--sample-steps", "2", "--rounds", "1"])
    assert row["params_mmfm"] > 0 and row["params_diffusers"] > 0
    assert all(row[k] > 0 for k in ("train_speedup", "train_speedup_recipe_optimizer", "sample_speedup"))
