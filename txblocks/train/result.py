"""What a training run returns: :class:`TrainResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from txblocks.train.tasks.base import Example

__all__ = ["TrainResult"]


@dataclass
class TrainResult:
    """What a run did.

    In a run on several processes every rank returns one; ``losses`` and ``accuracies``
    are the global batch's on every rank, while the evaluation (``examples``,
    ``accuracy``) and the saved ``checkpoint`` are rank 0's only (elsewhere: empty, nan,
    None).

    Attributes:
        model: the trained model (eval mode); with FSDP, rank 0 gets a whole, unsharded
            copy and the other ranks their sharded module.
        task: the task's name.
        losses: the task loss of every step (without the MoE ``aux_loss``); a resumed
            run's start with the checkpointed steps' losses.
        accuracies: the accuracy on every step's training batch.
        accuracy: on fresh examples after training, decoded greedily for text tasks.
        examples: those examples.
        seconds: wall time of the training steps (of this run, when resumed).
        tokens_per_second: positions processed per second while training, by all ranks.
        checkpoint: where the model was saved, or None.
        start_step: the step a resumed run started from (0 for a fresh run).
    """

    model: nn.Module
    task: str
    losses: list[float]
    accuracies: list[float]
    accuracy: float
    examples: list[Example] = field(repr=False)
    seconds: float
    tokens_per_second: float
    checkpoint: Path | None = None
    start_step: int = 0

    @property
    def first_loss(self) -> float:
        """The mean loss of the first steps (a tenth of the run, at most 10 steps)."""
        n = max(1, min(10, len(self.losses) // 10))
        return sum(self.losses[:n]) / n

    @property
    def final_loss(self) -> float:
        """The mean loss of the last steps (a tenth of the run, at most 10 steps)."""
        n = max(1, min(10, len(self.losses) // 10))
        return sum(self.losses[-n:]) / n
