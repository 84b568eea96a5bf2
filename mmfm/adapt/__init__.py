"""Domain adaptation: a task head on any mmfm image backbone, linear probe / LoRA (peft) / full fine-tuning,
the four MedMNIST task kinds, weighted losses, and label-subset selection."""
from .head import attach_head, image_backbone, load_backbone, resize_input, source_config
from .kinds import KINDS, TaskKind, balanced_weights
from .lora import LORA_TARGETS, add_lora, is_lora, merge_lora
from .methods import METHODS, apply_method, build_adapted, count_params

__all__ = ["attach_head", "image_backbone", "load_backbone", "resize_input", "source_config", "KINDS", "TaskKind",
           "balanced_weights", "LORA_TARGETS", "add_lora", "is_lora", "merge_lora", "METHODS", "apply_method",
           "build_adapted", "count_params"]
