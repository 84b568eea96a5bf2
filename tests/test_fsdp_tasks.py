"""`--strategy fsdp` (FSDP2 through Lightning's ModelParallelStrategy) on the real tasks, 2 CPU processes (gloo):
the gradients of one step equal one process's on the full batch (1e-5) for CLIP (two towers, features gathered
across ranks, a 0-dim logit scale that fully_shard cannot shard) and for DPO (the policy run on chosen and
rejected in one step, a GPT with tied embedding and head); the weights after one SGD step clipped by the global
gradient norm, gathered on rank 0, equal the single process's. The FSDP run is this file run as a script."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
N = 8  # the full batch; each of the 2 processes takes 4


class Rows(Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def clip_task():
    import mmfm
    from mmfm.train.clip import ClipTask, ClipTrain

    torch.manual_seed(0)
    model = mmfm.build_model("clip-test")
    c, g = model.config, torch.Generator().manual_seed(1)
    images = torch.randn(N, c.in_chans, c.img_size, c.img_size, generator=g)
    text = torch.randint(0, c.vocab_size - 1, (N, 8), generator=g)
    text[:, 5] = c.eot_id
    rows = [{"images": images[i], "text": text[i]} for i in range(N)]
    return ClipTask(model, ClipTrain(train_minutes=0), 10), "model", rows


def dpo_task():
    import mmfm
    from mmfm.align.tasks import DPOTask

    torch.manual_seed(0)
    policy, g = mmfm.build_model("gpt-test"), torch.Generator().manual_seed(1)
    mask = torch.zeros(12, dtype=torch.long)
    mask[6:] = 1  # the response: the same token count in every row, so the NLL mean splits evenly
    rows = [{"chosen": {"ids": torch.randint(0, 256, (12,), generator=g), "loss_mask": mask},
             "rejected": {"ids": torch.randint(0, 256, (12,), generator=g), "loss_mask": mask}, "index": i}
            for i in range(N)]
    ref = -20 + torch.randn(N, 2, generator=g)
    return DPOTask(policy, ref, beta=0.5, loss="dpo", nll_alpha=1.0), "policy", rows


def run(kind: str, mode: str, out: str) -> None:
    """One clipped SGD step of the task on `mode` (fsdp: 2 processes; auto: this one); rank 0 saves the gradients
    after backward and the (gathered) weights after the step to `out`."""
    import lightning as L

    from mmfm.train.strategies import build_strategy, gathered, is_sharded

    task, name, rows = {"clip": clip_task, "dpo": dpo_task}[kind]()

    def on_after_backward():
        full = lambda g: g.full_tensor() if hasattr(g, "full_tensor") else g  # noqa: E731
        grads = {n: full(p.grad).detach().clone() for n, p in task.named_parameters() if p.grad is not None}
        if task.trainer.is_global_zero:
            torch.save({"grads": grads, "sharded": is_sharded(task), "world": task.trainer.world_size}, out)

    task.on_after_backward = on_after_backward
    task.configure_optimizers = lambda: torch.optim.SGD(task.parameters(), lr=0.5)
    devices = 2 if mode == "fsdp" else 1
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=build_strategy(mode, devices), max_steps=1,
                        gradient_clip_val=0.05, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(task, DataLoader(Rows(rows), batch_size=N // devices, shuffle=False))
    plain = gathered(getattr(task, name))  # every rank calls it; rank 0 gets the full weights
    if trainer.is_global_zero:
        saved = torch.load(out, weights_only=True)
        saved["weights"] = {k: v.clone() for k, v in plain.state_dict().items()}
        saved["plain_is_sharded"] = is_sharded(plain)
        torch.save(saved, out)


def _fsdp(tmp_path, kind):
    out = tmp_path / f"{kind}_fsdp.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    proc = subprocess.run([sys.executable, __file__, kind, "fsdp", str(out)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


def _single(tmp_path, kind):
    out, threads = tmp_path / f"{kind}_single.pt", torch.get_num_threads()
    torch.set_num_threads(1)  # as the FSDP workers: the same summation order where the kernels allow it
    try:
        run(kind, "auto", str(out))
    finally:
        torch.set_num_threads(threads)
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("kind", ["clip", "dpo"])
def test_fsdp2_task_gradients_equal_one_process_full_batch(tmp_path, kind):
    sharded, single = _fsdp(tmp_path, kind), _single(tmp_path, kind)
    assert sharded["sharded"] and sharded["world"] == 2 and not single["sharded"]
    assert sharded["grads"].keys() == single["grads"].keys() and len(single["grads"]) > 10
    if kind == "clip":
        assert "model.logit_scale" in single["grads"]  # the replicated 0-dim parameter, averaged by its hook
    for name, g in single["grads"].items():
        torch.testing.assert_close(sharded["grads"][name], g, atol=1e-5, rtol=1e-4, msg=name)
    # one SGD step after clipping to 0.05 (the norm over sharded and replicated gradients decides the scale)
    assert not sharded["plain_is_sharded"]
    assert sharded["weights"].keys() == single["weights"].keys()
    for name, w in single["weights"].items():
        torch.testing.assert_close(sharded["weights"][name], w, atol=1e-6, rtol=1e-5, msg=name)


if __name__ == "__main__":
    run(*sys.argv[1:])
