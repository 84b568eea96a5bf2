"""The one optimizer and schedule builder every task calls: AdamW over decay / no-decay parameter groups (or Muon
for the hidden matrices and AdamW for the rest), and a linear-warmup cosine multiplier that can also follow a time
budget."""
from __future__ import annotations

import logging
import math
from typing import Callable

import torch

from .muon import Muon

log = logging.getLogger(__name__)

# leaf names (the part after the last ".") of gains and temperatures, which never get weight decay
NO_DECAY_NAMES = frozenset({"logit_scale", "gain", "gamma", "temperature"})


def _is_wrapped_by_fsdp(model: torch.nn.Module) -> bool:
    return any(type(m).__name__.startswith("FullyShardedDataParallel") for m in model.modules())


def _is_sharded(model: torch.nn.Module) -> bool:
    """FSDP (1: wrapper modules) or FSDP2 (`fully_shard`: DTensor parameters)."""
    from torch.distributed.tensor import DTensor

    return _is_wrapped_by_fsdp(model) or any(isinstance(p, DTensor) for p in model.parameters())


def _owner(model: torch.nn.Module, name: str) -> torch.nn.Module:
    return model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model


def decays(model: torch.nn.Module, name: str, p: torch.Tensor, by_name_only: bool = False) -> bool:
    """Weight decay for parameter `name` of `model`? None on biases, on the parameters of norm layers, on gains
    and the logit scale (NO_DECAY_NAMES); decay on matrices and embeddings (>= 2 dims). With `by_name_only`
    (FSDP-flattened views, whose dims say nothing), the name alone decides."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias" or leaf.endswith("_bias") or leaf in NO_DECAY_NAMES:
        return False
    if "Norm" in type(_owner(model, name)).__name__:  # LayerNorm, RMSNorm, GroupNorm, BatchNorm...
        return False
    return by_name_only or p.dim() >= 2


def param_groups(model: torch.nn.Module, weight_decay: float, lr_scale: dict[str, float] | None = None) -> list[dict]:
    """[{decayed params, weight_decay}, {the rest, 0.0}], trainable parameters only, a shared (tied) parameter
    once. Decided by name on the module's own parameters (see `decays`). With `lr_scale` ({submodule path:
    multiplier}, e.g. {"backbone.body": 0.1}), the parameters under each path (the longest matching path wins)
    form their own decay / no-decay pair with "lr_scale" set, which `build_optimizer` multiplies the lr by."""
    scales = _checked_scales(model, lr_scale or {})
    flat = _is_wrapped_by_fsdp(model)
    pairs = {path: ([], []) for path in ("", *scales)}
    for name, p in model.named_parameters():  # remove_duplicate=True: tied weights appear once
        if p.requires_grad:
            path = max((q for q in scales if name.startswith(q + ".")), key=len, default="")
            decay, no_decay = pairs[path]
            (decay if decays(model, name, p, by_name_only=flat) else no_decay).append(p)
    groups = []
    for path, (decay, no_decay) in pairs.items():
        extra = {"lr_scale": scales[path]} if path else {}
        groups += [{"params": decay, "weight_decay": weight_decay, **extra},
                   {"params": no_decay, "weight_decay": 0.0, **extra}]
    return groups


def _checked_scales(model: torch.nn.Module, lr_scale: dict[str, float]) -> dict[str, float]:
    for path, scale in lr_scale.items():
        if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
            raise ValueError(f"lr_scale[{path!r}]={scale!r}: must be a finite number > 0")
        try:
            model.get_submodule(path)
        except AttributeError:
            raise ValueError(f"lr_scale: {type(model).__name__} has no submodule {path!r}") from None
    return {path: float(scale) for path, scale in lr_scale.items()}


OPTIMIZERS = ("adamw", "muon", "auto")  # auto: muon where it applies (see `resolve_optimizer`), else adamw
MUON_LR = 0.02  # Keller Jordan's Muon default for hidden matrices (torch's "original" lr adjustment)


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999),
                    eps: float = 1e-8, fused: bool | None = None, trainer=None, optimizer: str = "adamw",
                    muon_lr: float = MUON_LR, muon_ns: str = "auto",
                    lr_scale: dict[str, float] | None = None) -> torch.optim.Optimizer:
    """AdamW over `param_groups`; the fused kernel when every parameter is on cpu or cuda (unless `fused` says),
    except under a mixed-precision `trainer` that clips gradients: Lightning refuses to clip a fused optimizer's
    gradients there (it unscales them inside its step), so that run gets the unfused kernel.

    optimizer="muon": torch.optim.Muon at `muon_lr` for the hidden matrices (`muon_params`) and the AdamW above for
    everything else (embeddings, head, norms, biases), as one `MuonAdamW` (see there). `muon_ns` is the dtype of
    Muon's Newton-Schulz iteration (`mmfm.train.muon`: "auto" = bf16 on CUDA and AMX CPUs, fp32 on other CPUs).

    lr_scale={submodule path: multiplier}: those parameters train at lr x multiplier (e.g. a pretrained backbone
    at 0.1 x the lr of a fresh head); schedulers scale every group's lr by the same factor (AdamW only)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer={optimizer!r}: choose from {', '.join(OPTIMIZERS)}")
    optimizer = resolve_optimizer(model, optimizer, lr_scale)
    if optimizer != "muon" and muon_lr != MUON_LR:
        raise ValueError(f"muon_lr={muon_lr} is used by optimizer='muon' only (optimizer={optimizer!r})")
    if optimizer != "muon" and muon_ns != "auto":
        raise ValueError(f"muon_ns={muon_ns!r} is used by optimizer='muon' only (optimizer={optimizer!r})")
    if not muon_lr > 0:
        raise ValueError(f"muon_lr must be > 0, got {muon_lr}")
    if lr_scale and optimizer != "adamw":
        raise ValueError(f"lr_scale is for optimizer='adamw' only (optimizer={optimizer!r})")
    hidden = muon_params(model) if optimizer == "muon" else set()
    groups = [{**g, "params": [p for p in g["params"] if p not in hidden]}
              for g in param_groups(model, weight_decay, lr_scale)]
    for g in groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
    if fused is None:
        params = [p for g in groups for p in g["params"]]
        fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
        fused = fused and not _clips_under_amp(trainer)
    adamw = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=fused)
    if optimizer == "adamw":
        return adamw
    # Muon's decoupled decay shrinks by lr * wd per step: the same shrink per step as AdamW gives its matrices
    muon = Muon([p for p in model.parameters() if p in hidden], lr=muon_lr,
                weight_decay=weight_decay * lr / muon_lr, ns_dtype=muon_ns)
    return MuonAdamW(muon, adamw)


def resolve_optimizer(model: torch.nn.Module, optimizer: str, lr_scale: dict | None = None) -> str:
    """"auto" -> "muon" for a model with an mmfm Transformer stack (its hidden matrices are what Muon is for),
    "adamw" where Muon does not apply: no stack, FSDP-sharded parameters (flattened, not 2-D matrices) or per-module
    lr scales. An explicit "muon" on FSDP-sharded parameters is refused."""
    fsdp = _is_sharded(model)
    if optimizer == "muon" and fsdp:
        raise ValueError("optimizer='muon' needs whole 2-D weight matrices; FSDP shards them across processes: use "
                         "optimizer=adamw (or auto) with FSDP")
    if optimizer != "auto":
        return optimizer
    choice = "muon" if _stacks(model) and not fsdp and not lr_scale else "adamw"
    log.info("optimizer auto: %s (%s)", choice, "Muon for the stack's matrices, AdamW for the rest"
             if choice == "muon" else "FSDP-sharded, no Transformer stack or per-module lr scales")
    return choice


def _stacks(model: torch.nn.Module) -> list:
    """The model's shared Transformer stacks (mmfm.nn.Transformer), where Muon's hidden matrices live."""
    from ..nn.transformer import Transformer

    return [m for m in model.modules() if isinstance(m, Transformer)]


def muon_params(model: torch.nn.Module) -> set:
    """The hidden matrices Muon takes: the 2-D weights of the nn.Linear layers inside the model's shared
    Transformer stacks (mmfm.nn.Transformer). Embeddings, the output head, norms and biases stay with AdamW
    (modded-nanogpt's split; Muon is defined for 2-D hidden-layer weights only)."""
    stacks = _stacks(model)
    if not stacks:
        raise ValueError(f"optimizer='muon' needs a model with an mmfm Transformer stack; {type(model).__name__} "
                         "has none")
    return {m.weight for s in stacks for m in s.modules()
            if isinstance(m, torch.nn.Linear) and m.weight.requires_grad and m.weight.dim() == 2}


class MuonAdamW(torch.optim.Optimizer):
    """Muon and AdamW stepped together, seen by Lightning and the LR schedulers as one optimizer: its
    `param_groups` are the Muon groups then the AdamW groups (the same dicts, so a scheduler scales both lrs by
    one factor), and its state dict holds both."""

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW):
        self.muon, self.adamw = muon, adamw
        super().__init__([p for g in muon.param_groups + adamw.param_groups for p in g["params"]], {})
        self.param_groups = muon.param_groups + adamw.param_groups

    @property
    def state(self) -> dict:
        """Both optimizers' per-parameter state, merged afresh on every read (Lightning reads it to move the
        state between devices); the state itself lives in the two optimizers."""
        return {**self.muon.state, **self.adamw.state}

    @state.setter
    def state(self, value) -> None:  # Optimizer.__init__ assigns an empty state; the two optimizers hold it
        if value:
            raise ValueError("MuonAdamW's state lives in its muon and adamw optimizers")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict: dict) -> None:
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])  # both replace their groups and state with new objects
        self.param_groups = self.muon.param_groups + self.adamw.param_groups


def _clips_under_amp(trainer) -> bool:
    if trainer is None or not getattr(trainer, "gradient_clip_val", None):
        return False
    from lightning.pytorch.plugins.precision import MixedPrecision

    return isinstance(getattr(trainer, "precision_plugin", None), MixedPrecision)


def warmup_cosine(warmup: int, total: int, min_ratio: float = 0.0,
                  progress: Callable[[], float] | None = None) -> Callable[[int], float]:
    """LR multiplier per step: linear warmup to 1 over `warmup` steps, then cosine to `min_ratio` at step
    `total`. With `progress` (the fraction of a time budget spent, the same on every rank), the cosine follows
    max(step fraction, time fraction), so a budgeted run always anneals."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        frac = (step - warmup) / max(total - warmup, 1)
        if progress is not None:
            frac = max(frac, progress())
        frac = min(frac, 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))

    return factor


def build_scheduler(opt: torch.optim.Optimizer, warmup: int, total: int, min_ratio: float = 0.0,
                    progress: Callable[[], float] | None = None) -> dict:
    """Lightning's per-step scheduler dict around `warmup_cosine`."""
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(warmup, total, min_ratio, progress))
    return {"scheduler": sched, "interval": "step"}


def adamw_warmup_cosine(model: torch.nn.Module, lr: float, weight_decay: float, warmup: int, total: int,
                        min_ratio: float = 0.0, trainer=None, lr_scale: dict[str, float] | None = None) -> dict:
    """What a task's configure_optimizers returns for AdamW (build_optimizer, `lr_scale` per submodule) under
    warmup-cosine (build_scheduler)."""
    opt = build_optimizer(model, lr, weight_decay, trainer=trainer, lr_scale=lr_scale)
    return {"optimizer": opt, "lr_scheduler": build_scheduler(opt, warmup, total, min_ratio)}


def maybe_compile(module: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """`compile=true` for every task: torch.compile the module's forward in place (state_dict keys unchanged)."""
    if enabled:
        module.compile()
    return module
