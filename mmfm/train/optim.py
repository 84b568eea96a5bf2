"""The one optimizer and schedule builder every task calls: AdamW over decay / no-decay parameter groups, and a
linear-warmup cosine multiplier that can also follow a time budget."""
from __future__ import annotations

import math
from typing import Callable

import torch

# leaf names (the part after the last ".") of gains and temperatures, which never get weight decay
NO_DECAY_NAMES = frozenset({"logit_scale", "gain", "gamma", "temperature"})


def _is_wrapped_by_fsdp(model: torch.nn.Module) -> bool:
    return any(type(m).__name__.startswith("FullyShardedDataParallel") for m in model.modules())


def _owner(model: torch.nn.Module, name: str) -> torch.nn.Module:
    return model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model


def decays(model: torch.nn.Module, name: str, p: torch.Tensor, by_name_only: bool = False) -> bool:
    """Weight decay for parameter `name` of `model`? None on biases, on the parameters of norm layers, on gains
    and the logit scale (NO_DECAY_NAMES); decay on matrices and embeddings (>= 2 dims). With `by_name_only`
    (FSDP-flattened views, whose dims say nothing), the name alone decides."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias" or leaf.endswith("_bias") or leaf in NO_DECAY_NAMES:
        return False
    if "Norm" in type(_owner(model, name)).__name__:  # LayerNorm, RMSNorm, GroupNorm, BatchNorm...
        return False
    return by_name_only or p.dim() >= 2


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """[{decayed params, weight_decay}, {the rest, 0.0}], trainable parameters only, a shared (tied) parameter
    once. Decided by name on the module's own parameters (see `decays`)."""
    flat = _is_wrapped_by_fsdp(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # remove_duplicate=True: tied weights appear once
        if p.requires_grad:
            (decay if decays(model, name, p, by_name_only=flat) else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999),
                    eps: float = 1e-8, fused: bool | None = None, trainer=None) -> torch.optim.AdamW:
    """AdamW over `param_groups`; the fused kernel when every parameter is on cpu or cuda (unless `fused` says),
    except under a mixed-precision `trainer` that clips gradients: Lightning refuses to clip a fused optimizer's
    gradients there (it unscales them inside its step), so that run gets the unfused kernel."""
    groups = param_groups(model, weight_decay)
    if fused is None:
        params = [p for g in groups for p in g["params"]]
        fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        fused = fused and not _clips_under_amp(trainer)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)


def _clips_under_amp(trainer) -> bool:
    if trainer is None or not getattr(trainer, "gradient_clip_val", None):
        return False
    from lightning.pytorch.plugins.precision import MixedPrecision

    return isinstance(getattr(trainer, "precision_plugin", None), MixedPrecision)


def warmup_cosine(warmup: int, total: int, min_ratio: float = 0.0,
                  progress: Callable[[], float] | None = None) -> Callable[[int], float]:
    """LR multiplier per step: linear warmup to 1 over `warmup` steps, then cosine to `min_ratio` at step
    `total`. With `progress` (the fraction of a time budget spent, the same on every rank), the cosine follows
    max(step fraction, time fraction), so a budgeted run always anneals."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(total - warmup, 1)
        if progress is not None:
            frac = max(frac, progress())
        frac = min(frac, 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))

    return factor


def build_scheduler(opt: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float = 0.0,
                    progress: Callable[[], float] | None = None) -> dict:
    """Lightning's per-step scheduler dict around `warmup_cosine`."""
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, total, min_ratio, progress))
    return {"scheduler": sched, "interval": "step"}


def adamw_warmup_cosine(model: torch.nn.Module, lr: float, weight_decay: float, warmup: int, total: int,
                        min_ratio: float = 0.0, trainer=None) -> dict:
    """What a task's configure_optimizers returns for AdamW (build_optimizer) under warmup-cosine
    (build_scheduler)."""
    opt = build_optimizer(model, lr, weight_decay, trainer=trainer)
    return {"optimizer": opt, "lr_scheduler": build_scheduler(opt, warmup, total, min_ratio)}


def maybe_compile(module: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """`compile=true` for every task: torch.compile the module's forward in place (state_dict keys unchanged)."""
    if enabled:
        module.compile()
    return module
