"""LoRA through peft on the shared stack's Linear layers, and merging back to a plain mmfm model."""
from __future__ import annotations

import torch.nn as nn

# nn.Linear names in mmfm/nn (Attention.qkv / .proj, Mlp.fc1 / .fc2); peft matches them as name suffixes
LORA_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def lora_targets(model: nn.Module, skip=("head",)) -> list[str]:
    """Where LoRA goes in `model`: the shared stack's Linear names for mmfm's own families; for any other network
    (a timm CNN or transformer), found by type: every Linear and ungrouped Conv2d outside `skip` (peft adapts
    both; grouped/depthwise convolutions are left out)."""
    timm = any(getattr(getattr(m, "config", None), "family", "") == "timm" for m in model.modules())
    if not timm and any(n.endswith(LORA_TARGETS) for n, _ in model.named_modules()):
        return list(LORA_TARGETS)
    found = [n for n, m in model.named_modules()
             if (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1))
             and not any(n == s or n.startswith(s + ".") for s in skip)]
    if not found:
        raise ValueError(f"no Linear or Conv2d layer for LoRA in a {type(model).__name__}")
    return found


def add_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
             targets=None, trainable=("head",)) -> nn.Module:
    """A peft model: LoRA adapters on `targets` (default: `lora_targets(model)`), every base weight frozen except
    the modules named in `trainable` (the task head), which stay trainable and are kept as they are by merging."""
    from peft import LoraConfig, get_peft_model

    targets = lora_targets(model, skip=trainable) if targets is None else targets
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets))
    peft_model = get_peft_model(model, config)
    for name in trainable:
        for p in model.get_submodule(name).parameters():
            p.requires_grad_(True)
    return peft_model


def lora_or_full(model: nn.Module, rank: int, alpha: float, alpha_given: bool = False) -> nn.Module:
    """A recipe's `lora_rank=` / `lora_alpha=`: LoRA adapters on every Linear of the stack with the base weights
    frozen (rank > 0), or the model as it is (rank 0); alpha given without a rank is an error (it would be ignored)."""
    if alpha_given and not rank:
        from ..config import ConfigError

        raise ConfigError("lora_alpha scales LoRA adapters; set lora_rank > 0 too")
    return add_lora(model, rank, alpha, trainable=()) if rank else model


def is_lora(model: nn.Module) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold the adapters into the base weights; returns the plain mmfm model (save_pretrained works)."""
    return model.merge_and_unload() if is_lora(model) else model


def inject_lora(module: nn.Module, rank: int = 8, alpha: float = 16.0) -> nn.Module:
    """LoRA adapters inside `module` in place (peft's inject_adapter_in_model), for a PART of a larger model, such as
    a VLM's image tower: its Linears (`lora_targets`) get adapters, every base weight of `module` is frozen, and
    the module keeps its class and place. `merge_lora_inplace` folds the adapters back."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank <= 0:
        raise ValueError(f"LoRA rank must be > 0, got {rank}")
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=lora_targets(module))
    inject_adapter_in_model(config, module)
    for name, p in module.named_parameters():
        p.requires_grad_("lora_" in name)
    return module


def merge_lora_inplace(module: nn.Module) -> nn.Module:
    """Folds every injected LoRA layer of `module` into its base Linear and puts the plain Linear back, so the
    module's state dict has its original keys again (save_pretrained and build_model(folder) work)."""
    from peft.tuners.lora import LoraLayer

    for name, m in list(module.named_modules()):
        if isinstance(m, LoraLayer):
            m.merge()
            parent, _, child = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, child, m.get_base_layer())
    return module
