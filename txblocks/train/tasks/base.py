"""What a training task is: the :class:`Task` protocol, its batches, and shared helpers.

A task generates labelled batches at run time from a ``torch.Generator`` (so a seed
fixes every batch), says which specs it can train, computes the loss and accuracy of a
model output, and shows a few predictions of the trained model (:meth:`Task.examples`).

Shapes: B batch, T time, V vocabulary, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from txblocks.errors import did_you_mean
from txblocks.nn.model import ModelOutput
from txblocks.spec.models import ModelSpec
from txblocks.tokenizer import ByteTokenizer

__all__ = [
    "IGNORE",
    "NEWLINE",
    "Batch",
    "Example",
    "LabelledTask",
    "Task",
    "TrainError",
    "ascii_ids",
    "check_classifier",
    "check_text",
    "decode_answers",
    "exact_match",
    "pad_left",
    "pad_right",
    "unknown_task",
]

IGNORE = -100  #: target value that no loss or accuracy counts
NEWLINE = 10  #: the byte ending every generated answer (the end-of-sequence id)


class TrainError(ValueError):
    """A training run cannot start: a spec that does not fit the task, an unknown task, bad data."""


@dataclass
class Batch:
    """One batch: the model's keyword inputs and the targets.

    Attributes:
        inputs: keyword arguments of the model's forward (``input_ids``, ``attention_mask``,
            ``decoder_input_ids``, ``pixel_values``).
        targets: (B, T) token ids with :data:`IGNORE` where nothing is predicted, or (B,)
            class ids.
    """

    inputs: dict[str, Tensor]
    targets: Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch({k: v.to(device) for k, v in self.inputs.items()}, self.targets.to(device))


@dataclass(frozen=True)
class Example:
    """One row of the final table: what the model saw, what it answered, what is right."""

    input: str
    prediction: str
    truth: str

    @property
    def correct(self) -> bool:
        return self.prediction == self.truth


@runtime_checkable
class Task(Protocol):
    """A supervised task that :func:`txblocks.train.run` can train a model on.

    Attributes:
        name: the ``--task`` name.
        archs: the spec archs it trains (``decoder``, ``encoder``, ``seq2seq``, ``vit``).
        description: one line for listings.
        tokenizer: decodes token ids for display, or None for tasks that read pixels.
    """

    name: str
    archs: tuple[str, ...]
    description: str
    tokenizer: Any

    def check(self, spec: ModelSpec) -> list[str]:
        """Why ``spec`` cannot train on this task (vocabulary, length, head); empty if it can."""
        ...

    def batch(self, size: int, generator: torch.Generator) -> Batch:
        """``size`` fresh examples drawn with ``generator`` (on the CPU)."""
        ...

    def loss(self, output: ModelOutput, batch: Batch) -> Tensor:
        """The scalar training loss (without the model's ``aux_loss``)."""
        ...

    def accuracy(self, output: ModelOutput, batch: Batch) -> Tensor:
        """The fraction of examples the output gets right (0-dim tensor)."""
        ...

    def examples(self, model: nn.Module, n: int, generator: torch.Generator) -> list[Example]:
        """``n`` fresh examples answered by ``model`` (greedy decoding for text)."""
        ...


def exact_match(logits: Tensor, targets: Tensor) -> Tensor:
    """Fraction of rows whose every counted target is the argmax: (B, T, V)/(B, T) or (B, K)/(B,).

    With teacher forcing this equals the exact-match accuracy of greedy decoding: greedy
    follows the true answer exactly when every step's argmax is the true next token.
    """
    right = (logits.argmax(-1) == targets) | (targets == IGNORE)
    if right.dim() > 1:
        right = right.flatten(1).all(dim=1)
    return right.float().mean()


class LabelledTask:
    """Cross-entropy on ``batch.targets`` (ignoring :data:`IGNORE`) and exact-match accuracy."""

    name: ClassVar[str]
    archs: ClassVar[tuple[str, ...]]
    description: ClassVar[str]
    tokenizer: Any = ByteTokenizer()

    @classmethod
    def for_spec(cls, spec: ModelSpec) -> LabelledTask:
        """The task with its defaults, fitted to ``spec`` where it must be (image size)."""
        return cls()

    def _logits(self, output: ModelOutput) -> Tensor:
        if output.logits is None:
            raise TrainError(f"task {self.name!r} needs a model with a head; this one has none")
        return output.logits

    def loss(self, output: ModelOutput, batch: Batch) -> Tensor:
        logits = self._logits(output).float()
        return F.cross_entropy(logits.flatten(0, -2), batch.targets.flatten(), ignore_index=IGNORE)

    def accuracy(self, output: ModelOutput, batch: Batch) -> Tensor:
        return exact_match(self._logits(output), batch.targets)


def pad_right(rows: Sequence[Sequence[int]], value: int = 0) -> Tensor:
    """(B, longest) long tensor of ``rows`` padded on the right with ``value``."""
    width = max(len(r) for r in rows)
    return torch.tensor([list(r) + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def pad_left(rows: Sequence[Sequence[int]], value: int = 0) -> tuple[Tensor, Tensor]:
    """Ids (B, longest) padded on the left, and the attention mask (1 on real tokens)."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[value] * (width - len(r)) + list(r) for r in rows], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
    return ids, mask


def decode_answers(new_tokens: Tensor, eos: int = NEWLINE) -> list[str]:
    """Generated ids (B, N) to text, each row cut before its first ``eos``."""
    out = []
    for row in new_tokens.tolist():
        if eos in row:
            row = row[: row.index(eos)]
        out.append(ByteTokenizer().decode(row))
    return out


def ascii_ids(text: str) -> list[int]:
    return list(text.encode("ascii"))


def check_text(spec: ModelSpec, task: str, *, length: int, vocab: int = 128) -> list[str]:
    """Problems of a text spec for a byte-level task of sequences up to ``length`` tokens."""
    problems = []
    if spec.vocab < vocab:
        problems.append(f"vocab_size is {spec.vocab}; task {task!r} uses bytes as token ids "
                        f"and needs vocab_size >= {vocab}")
    if spec.max_seq_len < length:
        problems.append(f"max_seq_len is {spec.max_seq_len}; task {task!r} needs sequences of "
                        f"up to {length} tokens")
    head = getattr(spec.head, "type", None)
    if head != "lm":
        problems.append(f"head is {head!r}; task {task!r} needs an lm head (head: lm)")
    return problems


def check_classifier(spec: ModelSpec, task: str, n_classes: int) -> list[str]:
    """Problems of a spec that should end in ``{type: classifier, n_classes: n_classes}``."""
    head = spec.head
    wanted = f"head: {{type: classifier, n_classes: {n_classes}}}"
    if getattr(head, "type", None) != "classifier":
        found = "none" if head is None else repr(getattr(head, "type", head))
        return [f"head is {found}; task {task!r} is {n_classes}-way classification and needs "
                f"{wanted}"]
    if head.n_classes != n_classes:
        return [f"head.n_classes is {head.n_classes}; task {task!r} has {n_classes} classes: "
                f"use {wanted}"]
    return []


def unknown_task(name: str, known: Sequence[str]) -> TrainError:
    return TrainError(f"unknown task {name!r}; built-in tasks: {', '.join(known)}"
                      f"{did_you_mean(name, known)}")
