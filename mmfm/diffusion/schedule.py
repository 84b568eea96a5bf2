"""Noise schedules and samplers from diffusers: DDPMScheduler for training, DDIM / DPM-Solver++ for sampling.

The training scheduler's config (betas, prediction type, T) is saved beside the model so that any
sampler can be rebuilt from it with `make_sampler(name, config)`.
"""
from __future__ import annotations

from pathlib import Path

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

from .flow import is_flow_config, make_flow_sampler

SAMPLERS = ("ddim", "dpm++", "ddpm", "euler")
SCHEDULER_DIR = "scheduler"
CLIP_KEY = "clip_sample"  # diffusers' DDPM/DDIM key; mmfm.diffusion.sample reads it from any sampler's config


def make_train_scheduler(prediction_type: str = "epsilon", beta_schedule: str = "squaredcos_cap_v2",
                         num_train_timesteps: int = 1000) -> DDPMScheduler:
    """The forward process: q(x_t | x_0) and the training target (epsilon or v)."""
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"prediction_type must be epsilon, v_prediction or sample, got {prediction_type!r}")
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                         prediction_type=prediction_type, clip_sample=True, clip_sample_range=1.0,
                         timestep_spacing="trailing")


def clips(config) -> bool:
    """Whether a model with this scheduler config samples in [-1, 1]: x0 clipped in DDIM/DDPM steps and the
    output clamped by mmfm.diffusion.sample. True for pixels, latents scaled by max, and configs without the key
    (flow-matching ones saved before it); False for latents at unit std (set_clip_sample)."""
    return bool(config.get(CLIP_KEY, True))


def set_clip_sample(scheduler, clip: bool):
    """Record in a training scheduler's config (saved with the model) whether its samples are clipped to
    [-1, 1]; diffusers' DDPM/DDIM read the same key. Returns the scheduler."""
    scheduler.register_to_config(**{CLIP_KEY: bool(clip)})
    return scheduler


def make_sampler(name: str, config):
    """A sampler sharing the training schedule: 'ddim' (eta=0), 'dpm++' (DPM-Solver++ 2M), 'ddpm', 'euler'
    (a flow-matching config: 'euler' or 'dpm++' on its flow sigmas, mmfm.diffusion.flow). An unclipped config
    (`clips`) gives an unclipped sampler, whatever its kind."""
    sampler = _build_sampler(name, config)
    if not clips(config):
        set_clip_sample(sampler, False)
    return sampler


def _build_sampler(name: str, config):
    if is_flow_config(config):
        return make_flow_sampler(name, {k: v for k, v in config.items() if k != CLIP_KEY})
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    if name == "ddpm":
        return DDPMScheduler.from_config(config)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    raise ValueError(f"unknown sampler {name!r}; choose from {SAMPLERS}")


def save_scheduler(scheduler, model_dir: str | Path) -> Path:
    path = Path(model_dir) / SCHEDULER_DIR
    scheduler.save_config(path)
    return path


def load_scheduler_config(model_dir: str | Path) -> dict:
    path = Path(model_dir) / SCHEDULER_DIR
    if not (path / "scheduler_config.json").is_file():
        raise FileNotFoundError(f"{path}/scheduler_config.json is missing: is {model_dir} a diffusion model folder?")
    return DDPMScheduler.load_config(path)
