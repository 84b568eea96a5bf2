"""Two gloo processes: with features gathered across ranks (with gradient), the DDP-averaged gradient of mmfm's
ClipLoss (open_clip's, local_loss + gather_with_grad) equals the gradient of one process on the full batch, with the
loss written out (the formula mmfm implemented itself before) as the reference."""
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import mmfm
from mmfm.losses.contrastive import ClipLoss

from test_clip_loss import reference_clip_loss

WORLD, BATCH = 2, 6


def _inputs(model):
    g = torch.Generator().manual_seed(1)
    c = model.config
    images = torch.randn(BATCH, c.in_chans, c.img_size, c.img_size, generator=g)
    text = torch.randint(0, c.vocab_size - 1, (BATCH, 8), generator=g)
    text[:, 5] = c.eot_id
    return images, text


def _model():
    torch.manual_seed(0)
    return mmfm.build_model("clip-test")


def _grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from open_clip.loss import ClipLoss as OpenClipLoss

        model = _model()
        images, text = _inputs(model)
        part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
        results = {}
        # open_clip's loss with the gathered columns detached: what the test would see without the gradient
        no_grad = OpenClipLoss(local_loss=True, gather_with_grad=False, rank=rank, world_size=WORLD)
        for name, loss_fn in [("mmfm", ClipLoss()), ("detached_gather", no_grad)]:
            grads = _grads(model, loss_fn(*model(images[part], text[part])))
            for g in grads.values():  # what DDP does: the mean over ranks
                dist.all_reduce(g)
                g /= WORLD
            results[name] = grads
        if rank == 0:
            torch.save(results, os.path.join(out_dir, "ddp_grads.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_negatives_gradients_equal_full_batch(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    ddp = torch.load(tmp_path / "ddp_grads.pt")
    model = _model()
    images, text = _inputs(model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' setting: the same summation order where the kernels allow it
    try:
        full = _grads(model, reference_clip_loss(*model(images, text)))
    finally:
        torch.set_num_threads(threads)
    assert full.keys() == ddp["mmfm"].keys()
    for name, g in full.items():
        assert g.abs().sum() > 0 or name == "visual.cls_token"
        # fp32 sums over a different split of the batch: ~1e-6 relative to the largest gradient entries (~5)
        tol = dict(atol=2e-5, rtol=1e-4)
        assert torch.allclose(ddp["mmfm"][name], g, **tol), name
    # the check is sensitive to the gradient through the gather: without it the text tower's gradients differ
    assert not torch.allclose(ddp["detached_gather"]["text.token_embedding.weight"], full["text.token_embedding.weight"],
                              **tol)
