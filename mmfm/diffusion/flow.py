"""Flow matching (rectified flow, as in Stable Diffusion 3 and Flux) beside the DDPM objectives.

The path between data and noise is straight: x_s = (1 - s) x0 + s * noise for s in [0, 1] (s = 1 is pure noise),
and the network regresses the constant velocity v = noise - x0 along it. The model sees the timestep
t = s * num_train_timesteps (the scale the DDPM objectives and diffusers' flow schedulers use), so the same DiT
serves both. Training draws s from a logit-normal distribution (SD3: s = sigmoid(n), n ~ N(mean, std)),
optionally shifted towards noise with diffusers' time shift s' = shift s / (1 + (shift - 1) s).

The network may instead predict the clean image (`prediction="sample"`, x-prediction as in JiT, Li and He 2025):
the velocity is then derived, v = (x_s - x0_hat) / s, and the loss is still the velocity MSE (with s clamped at
`X_PRED_MIN_S` so the derived velocity stays bounded near the data end). A clean image is easier for a small
network to produce than the noise-laden velocity; the choice is saved in the scheduler config (`flow_prediction`).

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
FLOW_PREDICTIONS = ("velocity", "sample")  # what the network outputs: v = noise - x0, or x0 itself
X_PRED_MIN_S = 0.05  # x-prediction: the derived velocity divides by max(s, this) (JiT's t_eps)


def make_flow_scheduler(shift: float = 1.0, num_train_timesteps: int = 1000,
                        prediction: str = "velocity") -> FlowMatchEulerDiscreteScheduler:
    """The flow-matching 'training scheduler': it holds T, the time shift and what the network predicts
    (`flow_prediction` in its config, beside diffusers' own keys); sampling uses it directly (Euler)."""
    if shift <= 0:
        raise ValueError(f"flow shift must be > 0, got {shift}")
    if prediction not in FLOW_PREDICTIONS:
        raise ValueError(f"flow prediction {prediction!r}: choose from {FLOW_PREDICTIONS}")
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)
    if prediction != "velocity":  # a velocity model's config stays diffusers' own (older folders read the same)
        scheduler.register_to_config(flow_prediction=prediction)
    return scheduler


def flow_prediction(config) -> str:
    """'velocity' (the default, also for configs saved before the key existed) or 'sample'."""
    return config.get("flow_prediction", "velocity")


def is_flow_config(config) -> bool:
    """True for a flow-matching scheduler config (FlowMatchEuler has a shift and no beta schedule)."""
    return "shift" in config and "beta_schedule" not in config


def is_flow(scheduler) -> bool:
    return is_flow_config(scheduler.config)


class FlowEulerSampler(FlowMatchEulerDiscreteScheduler):
    """diffusers' flow Euler scheduler with the two members mmfm.diffusion.sample asks every sampler for (the
    initial noise is N(0, I) and the model input is not rescaled). Only for sampling: the saved training
    scheduler stays a plain FlowMatchEulerDiscreteScheduler. `x_prediction`: the model outputs x0, turned into
    the velocity (x_s - x0) / s before diffusers' Euler step."""

    init_noise_sigma = 1.0
    x_prediction = False

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        return sample

    def step(self, model_output, timestep, sample, *args, **kwargs):
        if self.x_prediction:
            if self.step_index is None:
                self._init_step_index(timestep)
            s = self.sigmas[self.step_index].to(sample.device, sample.dtype)  # > 0: the last step starts above 0
            model_output = (sample - model_output) / s  # exact on the straight path (the clamp is for training)
        return super().step(model_output, timestep, sample, *args, **kwargs)


def make_flow_sampler(name: str, config):
    """'euler' (FlowMatchEulerDiscreteScheduler) or 'dpm++' (DPM-Solver++ 2M on flow sigmas, same shift), for a
    velocity or an x-prediction model (`flow_prediction` in the config)."""
    x_pred = flow_prediction(config) == "sample"
    if name == "euler":
        sampler = FlowEulerSampler.from_config({k: v for k, v in config.items() if k != "flow_prediction"})
        sampler.x_prediction = x_pred
        return sampler
    if name == "dpm++":  # diffusers reads x0 directly ("sample") or from the velocity ("flow_prediction")
        return DPMSolverMultistepScheduler(num_train_timesteps=config["num_train_timesteps"], use_flow_sigmas=True,
                                           prediction_type="sample" if x_pred else "flow_prediction",
                                           flow_shift=config["shift"], algorithm_type="dpmsolver++", solver_order=2)
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
    shift; an x-prediction model's output x0_hat enters as the velocity (x_s - x0_hat) / max(s, X_PRED_MIN_S).
    Same contract as diffusion_loss (condition dropout, learn_sigma's extra channels ignored, draws on x0's
    device from `generator` or the global generator)."""
    cond = drop_condition(cond or {}, p_uncond, null_label, generator)
    B, C = x0.shape[:2]
    s = shift_sigmas(logit_normal(B, logit_mean, logit_std, generator, x0.device), scheduler.config.shift)  # (B,)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)  # (B, C, H, W)
    x_s = flow_interpolate(x0, noise, s)  # (B, C, H, W)
    pred = model(x_s, s * scheduler.config.num_train_timesteps, **cond)[:, :C]
    if flow_prediction(scheduler.config) == "sample":
        pred = (x_s - pred) / s.clamp(min=X_PRED_MIN_S).view(-1, *([1] * (x0.dim() - 1)))  # (B, C, H, W) velocity
    return F.mse_loss(pred.float(), flow_target(x0, noise).float())
