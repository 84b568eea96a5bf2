"""Parallelism applied from outside the model: `--strategy fsdp` is FSDP2 (`torch.distributed.fsdp.fully_shard`)
through Lightning's ModelParallelStrategy, one shard unit per Transformer block plus the root.

Lightning's `FSDPStrategy` is FSDP1, which breaks on steps that run a module several times (DPO's chosen and
rejected, CLIP's two towers, classifier-free-guidance dropout); FSDP2 shards each parameter as a DTensor of the
original shape, so the decay/no-decay groups of `mmfm.train.optim.param_groups` (decided on names and shapes)
are the same as without sharding. Checkpoints are gathered into one full file on rank 0 (the same file a DDP
run writes, so a run can be resumed with either strategy).

What a task's models become (`ShardedTask.configure_model`):
- a child module with trainable parameters (the model, a policy with its value head, a LoRA/peft model whose
  base is frozen) is sharded; its 0-dim parameters (CLIP's logit scale, which fully_shard cannot shard) stay
  replicated, their gradients averaged over the ranks by a hook;
- a child whose parameters are all frozen (PPO's reference and reward models) is replicated: each rank holds
  it whole and runs it alone, with no collective;
- an EMA copy (`GatheredEMA`) is a full replica on every rank, updated from the gathered parameters.

A task opts in by inheriting `ShardedTask` (it adds Lightning's `configure_model` hook):

    class LMTask(ShardedTask, L.LightningModule): ...
    trainer = L.Trainer(strategy=build_strategy("fsdp", devices=2), accelerator="cpu", devices=2, ...)
    trainer.fit(task, ...)
    model = gathered(task.model)  # every rank calls it; the full weights on rank 0
"""
from __future__ import annotations

import contextlib
import copy
import logging
import weakref

import torch
import torch.nn as nn

from .ema import EMA

log = logging.getLogger(__name__)

# sharded module -> a copy of it before sharding, its parameters and persistent buffers on the meta device
_BLUEPRINTS: "weakref.WeakKeyDictionary[nn.Module, nn.Module]" = weakref.WeakKeyDictionary()


def shard_model(module: nn.Module, mesh) -> nn.Module:
    """fully_shard every Transformer block of `module`, then the root (embeddings, heads, anything else).
    Tied weights (a GPT's embedding and output head) stay together in the root unit. 0-dim parameters are left
    out of FSDP (it cannot shard them) and kept in step by averaging their gradients over the mesh."""
    from torch.distributed.fsdp import fully_shard

    from ..nn.transformer import Block

    _BLUEPRINTS[module] = blueprint(module)
    scalars = {p for p in module.parameters() if p.dim() == 0}
    blocks = [m for m in module.modules() if isinstance(m, Block)]
    for block in blocks:
        fully_shard(block, mesh=mesh, ignored_params=scalars)
    fully_shard(module, mesh=mesh, ignored_params=scalars)
    for p in scalars:
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(_average_grad(mesh))
    log.info("FSDP2: %d blocks + the root sharded over %d processes", len(blocks), mesh.size())
    return module


def _average_grad(mesh):
    import torch.distributed as dist

    group, world = mesh.get_group(), mesh.size()

    def hook(p: torch.Tensor) -> None:
        dist.all_reduce(p.grad, group=group)
        p.grad.div_(world)

    return hook


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


class ShardedTask:
    """Mixin for a LightningModule: under ModelParallelStrategy, shard each child module with trainable
    parameters (each as its own FSDP root, since a task calls its models' forward, not its own) over the
    data-parallel mesh, and replicate frozen children; a no-op under other strategies."""

    def configure_model(self) -> None:
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None or is_sharded(self):
            return
        own = [n for n, p in self.named_parameters(recurse=False) if p.requires_grad]
        if own:
            from ..config import ConfigError

            raise ConfigError(f"--strategy fsdp: {type(self).__name__} holds trainable parameters of its own "
                              f"({', '.join(own)}); FSDP2 shards child modules, so put them in one")
        for name, child in self.named_children():
            if any(p.requires_grad for p in child.parameters()):
                shard_model(child, mesh["data_parallel"])
            elif any(True for _ in child.parameters()):
                log.info("FSDP2: %s is frozen: replicated on every process", name)


def build_strategy(name: str, devices: int = 1, num_nodes: int = 1):
    """The Lightning strategy for a `--strategy` name: `fsdp` -> FSDP2 over all processes; anything else is
    passed to Lightning as is (auto, ddp, ddp_spawn, ...)."""
    if name != "fsdp":
        return name
    from lightning.pytorch.strategies import ModelParallelStrategy

    class FSDP2Strategy(ModelParallelStrategy):
        def setup(self, trainer) -> None:
            task = self.lightning_module
            if not isinstance(task, ShardedTask):
                from ..config import ConfigError

                raise ConfigError(f"--strategy fsdp is not supported by {type(task).__name__} (FSDP2 runs the "
                                  "tasks that inherit mmfm.train.strategies.ShardedTask); use --strategy ddp")
            super().setup(trainer)

    return FSDP2Strategy(data_parallel_size=devices * num_nodes, tensor_parallel_size=1,
                         save_distributed_checkpoint=False)


def blueprint(module: nn.Module) -> nn.Module:
    """A copy of `module` without its weights: parameters and persistent buffers on the meta device, shared
    ones still shared; non-persistent buffers (rotary tables, masks) and other attributes (the tokenizer)
    copied. Taken before sharding, since an FSDP2 module cannot be deep-copied."""
    memo: dict = {}
    for m in module.modules():
        for p in m.parameters(recurse=False):
            memo.setdefault(id(p), nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad))
        for name, b in m.named_buffers(recurse=False):
            if name not in m._non_persistent_buffers_set:
                memo.setdefault(id(b), torch.empty_like(b, device="meta"))
    return copy.deepcopy(module, memo)


def _materialize(module: nn.Module, device) -> nn.Module:
    """Uninitialised tensors on `device` in place of the meta ones, in place; shared parameters stay shared."""
    new, keep = {}, []
    for m in module.modules():
        for slots in (m._parameters, m._buffers):
            for name, t in list(slots.items()):
                if t is None or not t.is_meta:
                    continue
                if id(t) not in new:
                    keep.append(t)
                    real = torch.empty_like(t, device=device)
                    is_param = isinstance(t, nn.Parameter)
                    new[id(t)] = nn.Parameter(real, requires_grad=t.requires_grad) if is_param else real
                slots[name] = new[id(t)]
    return module


def gathered(model: nn.Module, everywhere: bool = False) -> nn.Module | None:
    """Call on EVERY rank (it is a collective when sharded): the model itself when it is not sharded; for an
    FSDP2-sharded model, an unsharded copy with the full weights, on rank 0 only (None on other ranks; on
    every rank with `everywhere`), on the CPU (on the model's device with `everywhere`): ready for the rank-0
    evaluation and save that every recipe does after fit."""
    if not is_sharded(model):
        return model
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=not everywhere))
    if not everywhere and dist.get_rank() != 0:
        return None
    device = next(iter(state.values())).device if state else torch.device("cpu")
    plain = _materialize(copy.deepcopy(_blueprint_of(model)), device)
    plain.load_state_dict(state)
    return plain.to(device)  # the blueprint's non-persistent buffers too


def _blueprint_of(model: nn.Module) -> nn.Module:
    if model in _BLUEPRINTS:
        return _BLUEPRINTS[model]
    from ..registry import model_class  # sharded by hand (fully_shard without shard_model): an mmfm model

    plain = model_class(model.config.family)(model.config)
    plain.tokenizer = getattr(model, "tokenizer", None)
    return plain


def unshard_children(task: nn.Module) -> nn.Module:
    """Call on EVERY rank after fit: on rank 0, each sharded child of `task` is replaced by its unsharded copy
    with the full weights (`gathered`), so that rank 0 evaluates and saves the task's models; a no-op for a
    task that was not sharded."""
    for name, child in list(task.named_children()):
        if is_sharded(child):
            plain = gathered(child)
            if plain is not None:
                setattr(task, name, plain)
    return task


@contextlib.contextmanager
def full_weights(module: nn.Module):
    """Hold a sharded module's full weights for a block of forwards that ranks may run a different number of
    times (autoregressive sampling stops when a rank's batch is done): every shard unit is all-gathered once on
    entry (a collective) and resharded on exit; forwards inside run no collective. A no-op when not sharded."""
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    if isinstance(module, FSDPModule):  # `module` becomes the FSDP root now, not the first unit to run forward
        module._get_fsdp_state()._lazy_init()
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    try:
        yield module
    finally:
        for m in units:
            m.reshard()
            m.set_reshard_after_forward(m is not module, recurse=False)  # FSDP2: the root unit stays gathered


class GatheredEMA(EMA):
    """mmfm.train.ema.EMA for `--strategy fsdp`: a full, unsharded copy of the task's (sharded) `model` on every
    rank (`ema.model`, usable by rank 0 alone: sample grids, the final evaluation), started from the gathered
    weights (an FSDP2 module cannot be deep-copied, which is how EMA starts its copy) and updated by EMA.update from
    the all-gathered parameters; same decay, warm-up and checkpoint state as EMA."""

    def _ensure(self, pl_module) -> None:
        if self.model is None:  # a collective: every rank starts its copy from the full weights
            src = getattr(pl_module, self.attr)
            full = gathered(src, everywhere=True)
            self.model = (copy.deepcopy(full) if full is src else full).eval().requires_grad_(False)
            if self._pending_state is not None:
                self.model.load_state_dict(self._pending_state)
                self._pending_state = None
