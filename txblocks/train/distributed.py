"""Data-parallel training on ``torch.distributed``: the process group, the shards, the wrappers.

A run under ``torchrun`` is one process per device (a *rank*). Every rank draws the whole
global batch from the same seeded generator and keeps its own slice of it, cut again into
``grad_accum`` micro-batches, so N ranks see exactly the examples that one process sees
with the same global batch. Each micro-batch's loss is weighted by its share of the global
batch's counted targets (:func:`shard_weight`), so the average the wrappers take over ranks
gives the gradient of the global batch's loss.

Strategies:

* ``none``: one process, the model as built.
* ``ddp``: :class:`torch.nn.parallel.DistributedDataParallel` (a replica per rank,
  gradients all-reduced).
* ``fsdp``: FSDP2, :func:`torch.distributed.fsdp.fully_shard` on every Transformer block and
  then on the whole model (parameters, gradients and optimizer state sharded across ranks).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from txblocks.nn.block import TransformerBlock
from txblocks.nn.moe import MoE
from txblocks.train.tasks.base import IGNORE, Batch, TrainError

__all__ = [
    "STRATEGIES",
    "Distributed",
    "all_reduce_sum",
    "check_batch_size",
    "counted",
    "full_state_dict",
    "gradient_sync",
    "seed_rank",
    "setup",
    "shard",
    "shard_weight",
    "teardown",
    "whole_model",
    "wrap",
]

#: The values of ``--strategy``.
STRATEGIES = ("none", "ddp", "fsdp")

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in the run.

    Attributes:
        strategy: ``none``, ``ddp`` or ``fsdp``.
        rank: this process's rank (0 with ``none``).
        world_size: the number of processes (1 with ``none``).
        device: this process's device (``cuda:LOCAL_RANK`` for ``cuda`` under torchrun).
        owns_group: whether :func:`setup` created the process group (and
            :func:`teardown` destroys it).
    """

    strategy: str
    rank: int
    world_size: int
    device: torch.device
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that prints, evaluates and writes the final model."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        """Whether the strategy is ``ddp`` or ``fsdp`` (a process group, maybe of one)."""
        return self.strategy != "none"


def setup(strategy: str, device: str | torch.device) -> Distributed:
    """Join the process group that ``torchrun`` describes (its environment variables), if
    ``strategy`` needs one; reuse a group the caller already initialised.

    The backend follows the device: NCCL on CUDA, gloo on the CPU. Under torchrun a device
    given as ``cuda`` becomes ``cuda:LOCAL_RANK``.

    Raises:
        TrainError: an unknown strategy, ``ddp``/``fsdp`` outside torchrun, or several
            processes started with strategy ``none``.
    """
    if strategy not in STRATEGIES:
        raise TrainError(f"unknown strategy {strategy!r}; allowed: {', '.join(STRATEGIES)}")
    device = torch.device(device)
    if strategy == "none":
        world = dist.get_world_size() if dist.is_initialized() else int(
            os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            raise TrainError(f"{world} processes were started (torchrun) but the strategy is "
                             "'none': each would train the same model alone; pass --strategy "
                             "ddp or fsdp")
        return Distributed(strategy, 0, 1, device)
    missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
    if missing and not dist.is_initialized():
        raise TrainError(
            f"strategy {strategy!r} runs one process per device under torch.distributed, "
            f"but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set: "
            f"launch it with torchrun, e.g. `torchrun --nproc-per-node 2 -m txblocks "
            f"train SPEC --strategy {strategy}`")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        owns = True
    return Distributed(strategy, dist.get_rank(), dist.get_world_size(), device, owns)


def teardown(env: Distributed) -> None:
    """Destroy the process group if :func:`setup` created it."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def seed_rank(seed: int, env: Distributed) -> None:
    """Give each rank its own stream for dropout and MoE jitter.

    Rank 0 keeps the stream of a one-process run (seeded with ``seed`` before the model
    was built); rank r > 0 is seeded with ``seed + r·2³²``.
    """
    if env.rank > 0:
        torch.manual_seed(seed + (env.rank << 32))


def check_batch_size(batch_size: int, world_size: int, grad_accum: int) -> None:
    """Raise :class:`TrainError` unless the global batch splits evenly into micro-batches."""
    parts = world_size * grad_accum
    if batch_size % parts:
        fits = [n for n in (batch_size - batch_size % parts, batch_size - batch_size % parts
                            + parts) if n > 0]
        raise TrainError(
            f"batch size {batch_size} (the global batch) must divide by world size × "
            f"grad-accum steps = {world_size} × {grad_accum} = {parts}: each rank trains "
            f"on batch size / world size examples a step, in grad-accum micro-batches; "
            f"try batch size {' or '.join(map(str, fits))}")


def _rows(batch: Batch) -> int:
    return batch.targets.shape[0]


def shard(batch: Batch, env: Distributed, grad_accum: int) -> list[Batch]:
    """This rank's micro-batches of the global ``batch``: rank r takes the r-th of
    ``world_size`` equal slices and cuts it into ``grad_accum`` equal micro-batches.

    Slicing keeps the global batch's padding, so every row is computed as in one process.
    """
    size = _rows(batch)
    check_batch_size(size, env.world_size, grad_accum)
    for name, value in batch.inputs.items():
        if not isinstance(value, torch.Tensor) or value.shape[:1] != (size,):
            raise TrainError(f"cannot split the batch: input {name!r} is not a tensor of "
                             f"{size} rows")
    step = size // (env.world_size * grad_accum)
    first = env.rank * size // env.world_size
    return [Batch({k: v[start:start + step] for k, v in batch.inputs.items()},
                  batch.targets[start:start + step])
            for start in range(first, first + grad_accum * step, step)]


def counted(batch: Batch) -> int:
    """The number of targets the loss counts (``targets != -100``); the rows if none is."""
    n = int((batch.targets != IGNORE).sum())
    return n if n > 0 else _rows(batch)


def shard_weight(micro: Batch, batch: Batch, env: Distributed) -> float:
    """The factor that turns a micro-batch's mean loss into its part of the global mean.

    A built-in task's loss is a mean over the counted targets; weighting it by the
    micro-batch's share of the global batch's counted targets makes the sum over all
    micro-batches of all ranks the global batch's loss. The wrappers average gradients
    over ranks, so the weight is multiplied by the world size. With one process and no
    accumulation it is exactly 1.
    """
    return counted(micro) / counted(batch) * env.world_size


def _has_conditional_params(model: nn.Module) -> bool:
    """Whether some parameters may get no gradient on some ranks (MoE experts)."""
    return any(isinstance(m, MoE) for m in model.modules())


def wrap(model: nn.Module, env: Distributed) -> nn.Module:
    """The model ready for ``env.strategy``: as it is, in DDP, or sharded with FSDP2 (in
    place: :func:`fully_shard` on each :class:`TransformerBlock`, then on the model)."""
    if env.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False,
                                       find_unused_parameters=_has_conditional_params(model))
    if env.strategy == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(env.device.type, (env.world_size,))
        for module in list(model.modules()):
            if isinstance(module, TransformerBlock):
                fully_shard(module, mesh=mesh)
        fully_shard(model, mesh=mesh)
        if _has_conditional_params(model):
            model.set_reduce_scatter_unused_params(True)  # type: ignore[operator]
        return model
    return model


@contextlib.contextmanager
def gradient_sync(wrapped: nn.Module, env: Distributed, sync: bool) -> Iterator[None]:
    """Around one micro-batch's forward and backward: reduce gradients across ranks only
    when ``sync`` (the last micro-batch of a step); before that they accumulate locally
    (DDP's ``no_sync``, FSDP2's ``set_requires_gradient_sync``)."""
    if env.strategy == "ddp" and not sync:
        with wrapped.no_sync():  # type: ignore[operator]
            yield
        return
    if env.strategy == "fsdp":
        wrapped.set_requires_gradient_sync(sync)  # type: ignore[operator]
    yield


def all_reduce_sum(tensor: torch.Tensor, env: Distributed) -> None:
    """Sum ``tensor`` over ranks, in place (nothing with one process)."""
    if env.parallel and env.world_size > 1:
        dist.all_reduce(tensor)


def full_state_dict(wrapped: nn.Module, env: Distributed) -> dict[str, Any] | None:
    """The whole model's state dict on the CPU, gathered from the shards (FSDP2) on rank 0.

    Every rank must call it (it is a collective with FSDP2); rank 0 gets the state dict,
    the others None.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(wrapped, options=options)
    return state if env.is_main else None


def whole_model(model: nn.Module, wrapped: nn.Module, env: Distributed,
                rebuild: Callable[[], nn.Module]) -> nn.Module:
    """The trained model as one plain module: ``model`` itself (one process, or DDP's
    replica), or with FSDP2 on rank 0 a new one from ``rebuild()`` loaded with the
    gathered full state dict (other ranks keep their sharded ``model``).

    Every rank must call it (with FSDP2 it gathers the shards).
    """
    if env.strategy != "fsdp":
        return model
    state = full_state_dict(wrapped, env)
    if state is None:
        return model
    whole = rebuild()
    whole.load_state_dict(state)
    return whole
