"""Flow matching (rectified flow, as in Stable Diffusion 3 and Flux) beside the DDPM objectives.

The path between data and noise is straight: x_s = (1 - s) x0 + s * noise for s in [0, 1] (s = 1 is pure noise),
and the network regresses the constant velocity v = noise - x0 along it. The model sees the timestep
t = s * num_train_timesteps (the scale the DDPM objectives and diffusers' flow schedulers use), so the same DiT
serves both. Training draws s from a logit-normal distribution (SD3: s = sigmoid(n), n ~ N(mean, std)),
optionally shifted towards noise with diffusers' time shift s' = shift s / (1 + (shift - 1) s).

Sampling integrates dx/ds = v from s = 1 to 0 with diffusers' FlowMatchEulerDiscreteScheduler (Euler) or
DPM-Solver++ with flow sigmas; the training scheduler *is* a FlowMatchEulerDiscreteScheduler, whose config
(num_train_timesteps, shift) is saved beside the model like the DDPM one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from .objective import drop_condition

FLOW = "flow"
FLOW_SAMPLERS = ("euler", "dpm++")


def make_flow_scheduler(shift: float = 1.0, num_train_timesteps: int = 1000) -> FlowMatchEulerDiscreteScheduler:
    """The flow-matching 'training scheduler': it holds T and the time shift; sampling uses it directly (Euler)."""
    if shift <= 0:
        raise ValueError(f"flow shift must be > 0, got {shift}")
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)


def is_flow_config(config) -> bool:
    """True for a flow-matching scheduler config (FlowMatchEuler has a shift and no beta schedule)."""
    return "shift" in config and "beta_schedule" not in config


def is_flow(scheduler) -> bool:
    return is_flow_config(scheduler.config)


class FlowEulerSampler(FlowMatchEulerDiscreteScheduler):
    """diffusers' flow Euler scheduler with the two members mmfm.diffusion.sample asks every sampler for (the
    initial noise is N(0, I) and the model input is not rescaled). Only for sampling: the saved training
    scheduler stays a plain FlowMatchEulerDiscreteScheduler."""

    init_noise_sigma = 1.0

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample


def make_flow_sampler(name: str, config):
    """'euler' (FlowMatchEulerDiscreteScheduler) or 'dpm++' (DPM-Solver++ 2M on flow sigmas, same shift)."""
    if name == "euler":
        return FlowEulerSampler.from_config(config)
    if name == "dpm++":
        return DPMSolverMultistepScheduler(num_train_timesteps=config["num_train_timesteps"], use_flow_sigmas=True,
                                           prediction_type="flow_prediction", flow_shift=config["shift"],
                                           algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"sampler {name!r} does not integrate a flow-matching model; choose from {FLOW_SAMPLERS}")


def shift_sigmas(s: torch.Tensor, shift: float) -> torch.Tensor:
    """diffusers' (SD3) time shift: shift > 1 moves training and sampling times towards the noise end."""
    return shift * s / (1 + (shift - 1) * s)


def logit_normal(n: int, mean: float = 0.0, std: float = 1.0, generator: torch.Generator | None = None,
                 device=None) -> torch.Tensor:
    """(n,) times in (0, 1): sigmoid of N(mean, std) (SD3's logit-normal sampling)."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))


def flow_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity of the straight path x_s = (1 - s) x0 + s noise: d x_s / ds = noise - x0."""
    return noise - x0


def flow_interpolate(x0: torch.Tensor, noise: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    s = s.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)  # (B, 1, 1, 1)
    return (1 - s) * x0 + s * noise


def flow_loss(model, scheduler, x0: torch.Tensor, cond: dict | None = None, p_uncond: float = 0.0,
              null_label: int | None = None, generator: torch.Generator | None = None,
              logit_mean: float = 0.0, logit_std: float = 1.0) -> torch.Tensor:
    """MSE between model(x_s, s * T, **cond) and noise - x0, s logit-normal then time-shifted by the scheduler's
    shift. Same contract as diffusion_loss (condition dropout, learn_sigma's extra channels ignored, draws on
    x0's device from `generator` or the global generator)."""
    cond = drop_condition(cond or {}, p_uncond, null_label, generator)
    B, C = x0.shape[:2]
    s = shift_sigmas(logit_normal(B, logit_mean, logit_std, generator, x0.device), scheduler.config.shift)  # (B,)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)  # (B, C, H, W)
    pred = model(flow_interpolate(x0, noise, s), s * scheduler.config.num_train_timesteps, **cond)[:, :C]
    return F.mse_loss(pred.float(), flow_target(x0, noise).float())
