"""One optimisation step: this rank's micro-batches forward and backward, then one update."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from txblocks.train.distributed import Distributed, gradient_sync, shard, shard_weight
from txblocks.train.tasks.base import Batch, Task

__all__ = ["Stepper"]


@dataclass
class Stepper:
    """What a step needs: the model as called (``forward``, maybe compiled) and as wrapped,
    the optimiser, its schedule, the float16 loss scaler, and the run's settings.

    Attributes:
        grad_accum: micro-batches per step and rank; gradients are reduced across ranks
            once, after the last.
        grad_clip: the largest global gradient norm; 0 turns clipping off.
        dtype: float32, or the autocast dtype of mixed precision.
    """

    forward: Any
    wrapped: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any
    scaler: torch.amp.GradScaler
    task: Task
    env: Distributed
    grad_accum: int
    grad_clip: float
    dtype: torch.dtype

    def autocast(self) -> Any:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.dtype)

    def step(self, batch: Batch, row: Tensor) -> int:
        """Train on this rank's share of the global ``batch``; add this rank's part of the
        step's loss and accuracy to ``row`` (2,) (summed over ranks, they are the global
        batch's). Returns the positions processed by all ranks together.

        Each micro-batch's loss is weighted by :func:`shard_weight` and the model's
        ``aux_loss`` (MoE) by 1 / ``grad_accum``; with one process and no accumulation
        both factors are exactly 1, so the step is the plain one.
        """
        env, task = self.env, self.task
        parts = shard(batch, env, self.grad_accum)
        rows = batch.targets.shape[0]
        self.optimizer.zero_grad(set_to_none=True)
        tokens = 0
        for i, part in enumerate(parts):
            weight = shard_weight(part, batch, env)
            part = part.to(env.device)
            with gradient_sync(self.wrapped, env, sync=i == len(parts) - 1):
                with self.autocast():
                    out = self.forward(**part.inputs)
                    loss = task.loss(out, part)
                    total = loss * weight
                    if out.aux_loss is not None:
                        total = total + out.aux_loss.float() / self.grad_accum
                self.scaler.scale(total).backward()
            with torch.no_grad():
                row[0] += loss.detach() * (weight / env.world_size)
                row[1] += task.accuracy(out, part) * (part.targets.shape[0] / rows)
            tokens += out.last_hidden_state.shape[:2].numel()
            if out.encoder_last_hidden_state is not None:
                tokens += out.encoder_last_hidden_state.shape[:2].numel()
        if self.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.wrapped.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with warnings.catch_warnings():  # float16 loss scaling skips steps that overflow
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
            self.schedule.step()
        return tokens * env.world_size  # every rank's shards have the same shape
