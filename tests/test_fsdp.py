"""--strategy fsdp is FSDP2 through Lightning's ModelParallelStrategy: on 2 CPU processes (gloo) the gradients
of one step equal one process's on the full batch, with the GPT's tied embedding/head and a module run twice
in one step (as DPO runs the policy on chosen and rejected)."""
import subprocess
import sys
import textwrap

import torch

SCRIPT = textwrap.dedent('''
    import sys
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import mmfm
    from mmfm.losses.lm import lm_loss
    from mmfm.train.strategies import ShardedTask, build_strategy, gathered, is_sharded

    mode, out = sys.argv[1], sys.argv[2]

    class Task(ShardedTask, L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.model = mmfm.build_model("gpt-test")

        def training_step(self, batch, _):
            x, y = batch
            return lm_loss(self.model(x), y) + 0.5 * lm_loss(self.model(y), x)  # the module runs twice

        def on_after_backward(self):
            full = lambda g: g.full_tensor() if hasattr(g, "full_tensor") else g
            grads = {n: full(p.grad).detach().clone() for n, p in self.named_parameters() if p.grad is not None}
            meta = {"sharded": is_sharded(self), "world": self.trainer.world_size}
            if self.trainer.is_global_zero:
                torch.save({"grads": grads, **meta}, out)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (8, 16), generator=g)
    y = torch.randint(0, 256, (8, 16), generator=g)
    devices = 2 if mode == "fsdp" else 1
    loader = DataLoader(TensorDataset(x, y), batch_size=8 // devices, shuffle=False)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy=build_strategy(mode, devices), max_steps=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    task = Task()
    trainer.fit(task, loader)
    plain = gathered(task.model)  # every rank calls it; rank 0 gets the full weights
    if trainer.is_global_zero:
        saved = torch.load(out, weights_only=True)
        saved["weights"] = {k: v.clone() for k, v in plain.state_dict().items()}
        saved["plain_is_sharded"] = is_sharded(plain)
        torch.save(saved, out)
''')


def _run(tmp_path, mode):
    script, out = tmp_path / "fsdp_run.py", tmp_path / f"{mode}.pt"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), mode, str(out)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=True)


def test_fsdp2_gradients_equal_one_process_full_batch(tmp_path):
    sharded, single = _run(tmp_path, "fsdp"), _run(tmp_path, "auto")
    assert sharded["sharded"] and sharded["world"] == 2 and not single["sharded"]
    assert sharded["grads"].keys() == single["grads"].keys() and len(single["grads"]) > 10
    for name, g in single["grads"].items():
        torch.testing.assert_close(sharded["grads"][name], g, atol=1e-5, rtol=1e-4, msg=name)
    # after one SGD step the gathered, unsharded weights equal the single process's
    assert not sharded["plain_is_sharded"]
    for name, w in single["weights"].items():
        torch.testing.assert_close(sharded["weights"][name], w, atol=1e-6, rtol=1e-5, msg=name)
