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


def make_train_scheduler(prediction_type: str = "epsilon", beta_schedule: str = "squaredcos_cap_v2",
                         num_train_timesteps: int = 1000) -> DDPMScheduler:
    """The forward process: q(x_t | x_0) and the training target (epsilon or v)."""
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"prediction_type must be epsilon, v_prediction or sample, got {prediction_type!r}")
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                         prediction_type=prediction_type, clip_sample=True, clip_sample_range=1.0,
                         timestep_spacing="trailing")


def make_sampler(name: str, config):
    """A sampler sharing the training schedule: 'ddim' (eta=0), 'dpm++' (DPM-Solver++ 2M), 'ddpm', 'euler'
    (a flow-matching config: 'euler' or 'dpm++' on its flow sigmas, mmfm.diffusion.flow)."""
    if is_flow_config(config):
        return make_flow_sampler(name, config)
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
