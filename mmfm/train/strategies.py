"""Parallelism applied from outside the model: `--strategy fsdp` is FSDP2 (`torch.distributed.fsdp.fully_shard`)
through Lightning's ModelParallelStrategy, one shard unit per Transformer block plus the root.

Lightning's `FSDPStrategy` is FSDP1, which breaks on steps that run a module several times (DPO's chosen and
rejected, CLIP's two towers, classifier-free-guidance dropout); FSDP2 shards each parameter as a DTensor of the
original shape, so the decay/no-decay groups of `mmfm.train.optim.param_groups` (decided on names and shapes)
are the same as without sharding. Checkpoints are gathered into one full file on rank 0 (the same file a DDP
run writes, so a run can be resumed with either strategy).

A task opts in by inheriting `ShardedTask` (it adds Lightning's `configure_model` hook):

    class LMTask(ShardedTask, L.LightningModule): ...
    trainer = L.Trainer(strategy=build_strategy("fsdp", devices=2), accelerator="cpu", devices=2, ...)
"""
from __future__ import annotations

import logging

import torch.nn as nn

log = logging.getLogger(__name__)


def shard_model(module: nn.Module, mesh) -> nn.Module:
    """fully_shard every Transformer block of `module`, then the root (embeddings, heads, anything else).
    Tied weights (a GPT's embedding and output head) stay together in the root unit."""
    from torch.distributed.fsdp import fully_shard

    from ..nn.transformer import Block

    blocks = [m for m in module.modules() if isinstance(m, Block)]
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)
    log.info("FSDP2: %d blocks + the root sharded over %d processes", len(blocks), mesh.size())
    return module


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


class ShardedTask:
    """Mixin for a LightningModule: under ModelParallelStrategy, shard each model the task holds (its direct
    children with parameters: the model, a frozen reference, a value head) over the data-parallel mesh, each
    as its own FSDP root, since a task calls its models' forward, not its own; a no-op under other strategies."""

    def configure_model(self) -> None:
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None or is_sharded(self):
            return
        for child in self.children():
            if any(True for _ in child.parameters()):
                shard_model(child, mesh["data_parallel"])


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

                raise ConfigError(f"--strategy fsdp is not supported by {type(task).__name__} yet (FSDP2 runs the "
                                  "tasks that inherit mmfm.train.strategies.ShardedTask: GPT pretraining); "
                                  "use --strategy ddp")
            super().setup(trainer)

    return FSDP2Strategy(data_parallel_size=devices * num_nodes, tensor_parallel_size=1,
                         save_distributed_checkpoint=False)


def gathered(model: nn.Module) -> nn.Module | None:
    """Call on EVERY rank after fit (it is a collective when sharded): the model itself when it is not sharded;
    for an FSDP2-sharded mmfm model, an unsharded copy with the full weights on rank 0 (None on other ranks),
    ready for the rank-0 evaluation and save that every recipe does after fit."""
    if not is_sharded(model):
        return model
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from ..registry import model_class

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    plain = model_class(model.config.family)(model.config)
    plain.load_state_dict(state)
    plain.tokenizer = getattr(model, "tokenizer", None)
    return plain
