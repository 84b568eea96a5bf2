"""torch.optim.Muon with the Newton-Schulz iteration run in the precision the hardware is fast at.

torch's Muon always orthogonalises in bfloat16 (`grad.bfloat16()` in `torch/optim/_muon.py`). That is right on a GPU
or a CPU with AMX bf16 units, but on a CPU without them a bf16 matmul runs 10-150x slower than fp32, and the
Newton-Schulz iteration then costs more than the whole forward and backward pass of a small GPT. `Muon` here is
torch's optimizer (its parameter groups, state, momentum and lr adjustment) with one change: `ns_dtype` picks the
iteration's dtype, "auto" choosing bf16 on CUDA and on AMX CPUs (as `--precision auto` does) and fp32 elsewhere.
With bf16 it runs torch's own step unchanged."""
from __future__ import annotations

import logging

import torch
from torch.optim._muon import _adjust_lr

from .precision import auto_cpu_precision

log = logging.getLogger(__name__)

NS_DTYPES = ("auto", "bf16", "fp32")


def newton_schulz(g: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """The quintic Newton-Schulz orthogonalisation of the 2-D matrix `g` (Keller Jordan's Muon), computed in
    `dtype`: the same operations as torch's `_zeropower_via_newtonschulz`, which fixes the dtype to bfloat16."""
    a, b, c = ns_coefficients
    x = g.to(dtype)
    wide = g.size(0) > g.size(1)
    if wide:
        x = x.T  # (cols, rows): iterate on the short side
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if wide else x


def _check(ns_dtype: str) -> None:
    if ns_dtype not in NS_DTYPES:
        raise ValueError(f"muon_ns={ns_dtype!r}: choose from {', '.join(NS_DTYPES)}")


def resolve_ns_dtype(ns_dtype: str, device: torch.device) -> torch.dtype:
    """bf16 or fp32 for the Newton-Schulz iteration: "auto" is bf16 on CUDA and on a CPU where `--precision auto`
    picks bf16 (AMX units, confirmed by its probe), fp32 on other CPUs."""
    _check(ns_dtype)
    if ns_dtype == "auto":
        fast_bf16 = device.type != "cpu" or auto_cpu_precision() == "bf16-mixed"
        ns_dtype = "bf16" if fast_bf16 else "fp32"
    return torch.bfloat16 if ns_dtype == "bf16" else torch.float32


class Muon(torch.optim.Muon):
    """torch.optim.Muon whose Newton-Schulz iteration runs in `ns_dtype` ("auto", "bf16" or "fp32", see
    `resolve_ns_dtype`); every other argument is torch's. The dtype is resolved at the first step, from the device
    of the parameters, and logged."""

    def __init__(self, params, *args, ns_dtype: str = "auto", **kwargs):
        _check(ns_dtype)
        super().__init__(params, *args, **kwargs)
        self.ns_dtype, self._dtype = ns_dtype, None

    def _resolve(self) -> torch.dtype:
        if self._dtype is None:
            device = next(p.device for g in self.param_groups for p in g["params"])
            self._dtype = resolve_ns_dtype(self.ns_dtype, device)
            log.info("Muon: Newton-Schulz in %s (muon_ns=%s, %s)", self._dtype, self.ns_dtype, device.type)
        return self._dtype

    @torch.no_grad()
    def step(self, closure=None):
        if self._resolve() == torch.bfloat16:
            return super().step(closure)  # torch's own bf16 path
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            for p, g, buf in zip(params, grads, bufs):
                buf.lerp_(g, 1 - group["momentum"])
                update = g.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                       self._dtype)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-_adjust_lr(group["lr"], group["adjust_lr_fn"], p.shape))
        return loss
