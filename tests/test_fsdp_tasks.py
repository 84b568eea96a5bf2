"""`--strategy fsdp` (FSDP2 through Lightning's ModelParallelStrategy) on the real tasks, 2 CPU processes (gloo):
the gradients of one step equal one process's on the full batch (1e-5) for CLIP (two towers, features gathered
across ranks, a 0-dim logit scale that fully_shard cannot shard) and for DPO (the policy run on chosen and
rejected in one step); the weights after one clipped SGD step, gathered on rank 0, equal the single process's."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import sys
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, Dataset

    import mmfm
    from mmfm.align.tasks import DPOTask
    from mmfm.train.clip import ClipTask, ClipTrain
    from mmfm.train.strategies import build_strategy, gathered, is_sharded

    kind, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]
    N = 8

    class Rows(Dataset):
        def __init__(self, rows):
            self.rows = rows

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, i):
            return self.rows[i]

    def clip_task():
        torch.manual_seed(0)
        model = mmfm.build_model("clip-test")
        c, g = model.config, torch.Generator().manual_seed(1)
        images = torch.randn(N, c.in_chans, c.img_size, c.img_size, generator=g)
        text = torch.randint(0, c.vocab_size - 1, (N, 8), generator=g)
        text[:, 5] = c.eot_id
        rows = [{"images": images[i], "text": text[i]} for i in range(N)]
        return ClipTask(model, ClipTrain(train_minutes=0), 10), rows

    def dpo_task():
        torch.manual_seed(0)
        policy, g = mmfm.build_model("gpt-test"), torch.Generator().manual_seed(1)
        mask = torch.zeros(12, dtype=torch.long)
        mask[6:] = 1  # the response: the same token count in every row, so the NLL mean splits evenly
        rows = [{"chosen": {"ids": torch.randint(0, 256, (12,), generator=g), "loss_mask": mask},
                 "rejected": {"ids": torch.randint(0, 256, (12,), generator=g), "loss_mask": mask}, "index": i}
                for i in range(N)]
        ref = -20 + torch.randn(N, 2, generator=g)
        return DPOTask(policy, ref, beta=0.5, loss="dpo", nll_alpha=1.0), rows

    task, rows = {"clip": clip_task, "dpo": dpo_task}[kind]()

    def on_after_backward():
        full = lambda g: g.full_tensor() if hasattr(g, "full_tensor") else g
        grads = {n: full(p.grad).detach().clone() for n, p in task.named_parameters() if p.grad is not None}
        if task.trainer.is_global_zero:
            torch.save({"grads": grads, "sharded": is_sharded(task), "world": task.trainer.world_size}, out)

    task.on_after_backward = on_after_backward
    task.configure_optimizers = lambda: torch.optim.SGD(task.parameters(), lr=0.5)
    devices = 2 if mode == "fsdp" else 1
    loader = DataLoader(Rows(rows), batch_size=N // devices, shuffle=False)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=build_strategy(mode, devices), max_steps=1,
                        gradient_clip_val=0.05, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(task, loader)
    name = "policy" if kind == "dpo" else "model"
    plain = gathered(getattr(task, name))  # every rank calls it; rank 0 gets the full weights
    if trainer.is_global_zero:
        saved = torch.load(out, weights_only=True)
        saved["weights"] = {k: v.clone() for k, v in plain.state_dict().items()}
        saved["plain_is_sharded"] = is_sharded(plain)
        torch.save(saved, out)
''')


def _run(tmp_path, kind, mode):
    script, out = tmp_path / "fsdp_task.py", tmp_path / f"{kind}_{mode}.pt"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script), kind, mode, str(out)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("kind", ["clip", "dpo"])
def test_fsdp2_task_gradients_equal_one_process_full_batch(tmp_path, kind):
    sharded, single = _run(tmp_path, kind, "fsdp"), _run(tmp_path, kind, "auto")
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
