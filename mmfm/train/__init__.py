"""Training: the recipe contract, thin LightningModules per task, shared callbacks."""
from .callbacks import LossHistory, plot_curves
from .recipe import (Timer, checkpoint_to_resume, finish, make_trainer, parse_args, recipe_parser,
                     resolve_accelerator, setup_logging,
                     split_overrides, write_metrics)

__all__ = ["LossHistory", "plot_curves", "Timer", "checkpoint_to_resume", "finish", "setup_logging", "make_trainer", "parse_args", "recipe_parser", "resolve_accelerator",
           "split_overrides", "write_metrics"]
