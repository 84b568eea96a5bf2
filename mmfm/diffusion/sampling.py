"""Sampling with classifier-free guidance through any diffusers scheduler (DDIM, DPM-Solver++, ...)."""
from __future__ import annotations

import torch

from .objective import null_condition
from .schedule import clips


def guide(cond_out: torch.Tensor, uncond_out: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance on all channels: uncond + scale * (cond - uncond); scale 1 = conditional."""
    return uncond_out + scale * (cond_out - uncond_out)


def _cat(a: dict, b: dict) -> dict:
    return {k: (None if a[k] is None else torch.cat([a[k], b[k]])) for k in a}


def guided_output(model, x: torch.Tensor, t: torch.Tensor, cond: dict, null_label: int | None,
                  scale: float) -> torch.Tensor:
    """One guided network evaluation: a single batch of 2B rows (conditional, then null) unless scale == 1."""
    if scale == 1.0 or not cond:
        return model(x, t, **cond)
    both = model(torch.cat([x, x]), torch.cat([t, t]), **_cat(cond, null_condition(cond, null_label)))  # (2B, ...)
    c, u = both.chunk(2)
    return guide(c, u, scale)


@torch.no_grad()
def sample(model, scheduler, shape: tuple, cond: dict | None = None, guidance_scale: float = 1.0,
           steps: int = 50, null_label: int | None = None, generator: torch.Generator | None = None,
           device=None, noise: torch.Tensor | None = None, progress=None) -> torch.Tensor:
    """Draw x_T ~ N(0, I) (from `generator` on its own device, so a CPU generator gives the same samples on
    any device; without one on the model's device; or take `noise`) and denoise with `scheduler` in `steps`
    steps on `device` (default: the model's); returns x_0 (shape), clamped to [-1, 1] unless the scheduler's
    config says clip_sample=False (latents at unit std, mmfm.diffusion.latent). `null_label` defaults to
    model.null_label when present."""
    cond = cond or {}
    device = device or next(model.parameters()).device
    if null_label is None:
        null_label = getattr(model, "null_label", None)
    C = shape[1]
    if noise is None:
        noise = torch.randn(shape, generator=generator, device=generator.device if generator is not None else device)
    x = noise.to(device) * scheduler.init_noise_sigma  # (B, C, H, W)
    scheduler.set_timesteps(steps, device=device)
    for t in (progress(scheduler.timesteps) if progress else scheduler.timesteps):
        tb = t.expand(shape[0])  # (B,) on `device` (set_timesteps put the timesteps there)
        out = guided_output(model, scheduler.scale_model_input(x, t), tb, cond, null_label, guidance_scale)
        x = scheduler.step(out[:, :C], t, x, generator=generator).prev_sample
    return x.clamp(-1, 1) if clips(scheduler.config) else x
