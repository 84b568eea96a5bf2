"""The denoising objective, kept outside the model: the model is any callable
`model(x_t (B, C, H, W), t (B,), **cond) -> (B, C or 2C, H, W)`.

`cond` is a dict of keyword tensors (`y` labels, `text` pooled embeddings, `context` token embeddings);
condition dropout replaces a random subset of rows by the null condition, so one network learns both
p(x | c) and p(x) for classifier-free guidance.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NULL_LABEL_KEY = "y"


def null_condition(cond: dict, null_label: int | None) -> dict:
    """The unconditional counterpart of `cond`: labels -> the null id, text features and tokens -> zeros."""
    out = {}
    for k, v in cond.items():
        if v is None or k == "context_mask":
            out[k] = v
        elif k == NULL_LABEL_KEY:
            if null_label is None:
                raise ValueError("class labels given but no null label id")
            out[k] = torch.full_like(v, null_label)
        else:
            out[k] = torch.zeros_like(v)
    return out


def drop_condition(cond: dict, p: float, null_label: int | None, generator: torch.Generator | None = None) -> dict:
    """Each row independently replaced by the null condition with probability p."""
    if p <= 0 or not cond:
        return cond
    first = next(v for v in cond.values() if v is not None)
    B = first.shape[0]
    drop = torch.rand(B, generator=generator, device=first.device) < p  # (B,) on the condition's device
    null = null_condition(cond, null_label)
    out = {}
    for k, v in cond.items():
        if v is None or k == "context_mask":
            out[k] = v
            continue
        m = drop.view(B, *([1] * (v.dim() - 1)))  # (B, 1, ...) broadcast over feature dims
        out[k] = torch.where(m, null[k], v)
    return out


def diffusion_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network regresses: the noise (epsilon), v = alpha_t * eps - sigma_t * x0, or x0 itself (sample)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "sample":
        return x0
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise ValueError(f"unsupported prediction_type {kind!r}")


def diffusion_loss(model, scheduler, x0: torch.Tensor, cond: dict | None = None, p_uncond: float = 0.0,
                   null_label: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """MSE between model(x_t, t, **cond) and the target at uniformly drawn t (the DDPM 'simple' loss).
    With learn_sigma models (2C output channels) only the first C channels are regressed. Timesteps and noise
    are drawn on x0's device (and dtype) from `generator` (which must live there) or the global generator.
    A flow-matching scheduler (mmfm.diffusion.flow) selects the rectified-flow loss instead."""
    from .flow import flow_loss, is_flow

    if is_flow(scheduler):
        return flow_loss(model, scheduler, x0, cond, p_uncond, null_label, generator)
    cond = drop_condition(cond or {}, p_uncond, null_label, generator)
    B, C = x0.shape[:2]
    T = scheduler.config.num_train_timesteps
    t = torch.randint(0, T, (B,), generator=generator, device=x0.device)  # (B,)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)  # (B, C, H, W)
    x_t = scheduler.add_noise(x0, noise, t)
    pred = model(x_t, t, **cond)[:, :C]  # (B, C, H, W)
    return F.mse_loss(pred.float(), diffusion_target(scheduler, x0, noise, t).float())
