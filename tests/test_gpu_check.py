"""The prepared accelerator check runs its own code on the CPU at *-test sizes, so that a lent GPU's
minutes are not spent finding a typo."""
import json

import pytest
import torch

from mmfm import gpu_check


def test_decode_and_bench_parts_report_on_cpu(tmp_path):
    report = gpu_check.main(["--tiny", "--device", "cpu", "--skip", "recipes", "--iters", "1", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "report.json").read_text())["info"]["device"] == "cpu"
    assert report["decode"]["tokens_equal"] is True and report["decode"]["max_logprob_diff"] < 1e-4
    for kind, row in report["bench"].items():
        assert "error" not in row, (kind, row)
        assert row["per_s"] > 0 and row["flops_per_step"] > 0 and row["mfu"] is None  # no peak known for a CPU


def test_failures_are_recorded_not_raised(monkeypatch):
    monkeypatch.setitem(gpu_check.BENCH, "gpt", ("no-such-preset", "no-such-preset", 2, None))
    row = gpu_check._guarded(gpu_check.bench_model, "gpt", torch.device("cpu"), True, 1)
    assert "no-such-preset" in row["error"]


@pytest.mark.slow
def test_every_recipe_runs_tiny_on_cpu(tmp_path):
    report = gpu_check.main(["--tiny", "--device", "cpu", "--skip", "decode,bench", "--steps", "3", "--out", str(tmp_path)])
    failed = {n: r.get("log_tail") for n, r in report["recipes"].items() if r["rc"] != 0}
    assert not failed, failed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_decode_path_on_cuda(tmp_path):
    row = gpu_check.decode_check(torch.device("cuda"), tiny=True)
    assert row["tokens_equal"]
