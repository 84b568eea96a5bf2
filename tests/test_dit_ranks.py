"""Two gloo processes seeded alike (as the DiT recipe seeds every rank): each rank draws its own diffusion
timesteps and noise, and a checkpoint's RNG state gives each rank back its own stream on resume."""
import os
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mmfm
from mmfm.diffusion import diffusion_loss, make_train_scheduler
from mmfm.train.diffusion import DiffusionTask
from mmfm.train.reliability import RNGState
from test_clip_ddp import _free_port

WORLD, STEPS = 2, 3


def _draws(scheduler) -> torch.Tensor:
    """The timesteps and the first noise value the objective draws over STEPS steps -> (STEPS, 5)."""
    seen = []

    def model(x_t, t, **cond):
        seen.append(torch.cat([t.double(), x_t.flatten()[:1].double()]))
        return x_t

    for _ in range(STEPS):
        diffusion_loss(model, scheduler, torch.zeros(4, 1, 4, 4), {"y": torch.arange(4)}, 0.1, 9)
    return torch.stack(seen)


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.manual_seed(0)  # the recipe seeds every rank alike (identical initial weights)
        task = DiffusionTask(mmfm.build_model("dit-test", depth=1, input_size=4, patch_size=2, num_classes=9),
                             make_train_scheduler(), seed=0)
        task._trainer = SimpleNamespace(global_rank=rank)  # what Lightning's DDP gives the module
        task.on_fit_start()
        scheduler = make_train_scheduler()
        _draws(scheduler)  # some training before the checkpoint
        saved = RNGState().state_dict()  # every rank calls it (a collective); rank 0 writes the checkpoint
        if rank == 0:
            torch.save(saved, os.path.join(out_dir, "rng.pt"))
        dist.barrier()
        after = _draws(scheduler)  # the uninterrupted run
        torch.manual_seed(1234)  # a restarted process, then the resume
        resumed = RNGState()
        resumed.load_state_dict(torch.load(os.path.join(out_dir, "rng.pt"), weights_only=True))
        resumed.on_train_start(SimpleNamespace(global_rank=rank), task)
        torch.save({"after": after, "resumed": _draws(scheduler)}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ranks_draw_their_own_noise_and_resume_their_own_stream(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    assert not torch.equal(r0["after"], r1["after"])  # was: both ranks the same timesteps and noise
    assert not torch.equal(r0["after"][:, :4], r1["after"][:, :4])  # the timesteps themselves differ
    torch.testing.assert_close(r0["resumed"], r0["after"], rtol=0, atol=0)
    torch.testing.assert_close(r1["resumed"], r1["after"], rtol=0, atol=0)  # was: rank 0's stream on every rank
    assert len(torch.load(tmp_path / "rng.pt")["ranks"]) == WORLD
