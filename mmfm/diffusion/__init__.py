"""Diffusion outside the model: schedules and samplers (diffusers), the denoising objective, guided sampling."""
from .objective import diffusion_loss, diffusion_target, drop_condition, null_condition
from .sampling import guide, guided_output, sample
from .schedule import SAMPLERS, load_scheduler_config, make_sampler, make_train_scheduler, save_scheduler

__all__ = ["diffusion_loss", "diffusion_target", "drop_condition", "null_condition", "guide", "guided_output",
           "sample", "SAMPLERS", "load_scheduler_config", "make_sampler", "make_train_scheduler", "save_scheduler"]
