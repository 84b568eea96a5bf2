"""Time-budgeted DDP runs of the CLIP and DiT recipes on 2 gloo processes, with rank 1's clocks running 3x fast
and starting late: both ranks stop at the same step with the same learning rate and identical weights (and EMA),
as GPT's (tests/test_train_budget.py). CLIP's budget is mmfm's BudgetClock (rank 0's seconds broadcast, the cosine
following the budget); the DiT's is Lightning's Timer (max_time), which broadcasts rank 0's stop decision."""
import pytest
from test_clip_user_data import MODEL as CLIP_TINY
from test_clip_user_data import _csv
from test_train_budget import ddp_budget_run


def test_clip_ddp_ranks_stop_together_under_a_time_budget(tmp_path):
    data = _csv(tmp_path / "data" / "pairs.csv", n=16)
    model = [a for a in CLIP_TINY if not a.startswith("schedule_by_time=")]
    r0, _, metrics = ddp_budget_run(tmp_path, "clip_pretrain", ["--data", str(data), *model, "schedule_by_time=true",
                                                                "train_minutes=0.05"])
    # the step that spent the budget left the cosine at its end (min_lr_ratio * lr), on both ranks
    assert r0["lr"] == pytest.approx(0.05 * 1e-3)
    assert metrics["fit_s"] >= 3.0


@pytest.mark.slow
def test_dit_ddp_ranks_stop_together_under_a_time_budget(tmp_path):
    args = ["--preset", "dit-test", "input_size=28", "depth=1", "max_minutes=0.05", "batch_size=8", "limit=32",
            "classifier=none", "sample_every=0", "sample_steps=2"]
    r0, _, _ = ddp_budget_run(tmp_path, "dit_train", args)
    assert r0["ema"] is not None
