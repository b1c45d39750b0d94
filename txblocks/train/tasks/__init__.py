"""Built-in synthetic tasks, generated at run time (nothing is downloaded).

=========  ========  ==================================================================
task       arch      what the model learns
=========  ========  ==================================================================
addition   decoder   ``47+38=`` → ``85`` (exact match of greedy answers)
copy       decoder   ``qxkf>`` → ``qxkf``
sorted     encoder   ``^1339`` → sorted / unsorted (``head: {type: classifier, n_classes: 2}``)
reverse    seq2seq   ``stop`` → ``pots``
shapes     vit       an image → square / circle / triangle / cross (``n_classes: 4``)
=========  ========  ==================================================================

Text tasks use ASCII bytes as token ids (vocab_size ≥ 128) and end answers with a
newline (id 10), so ``txblocks generate`` reads a trained model with its byte tokenizer.
"""

from __future__ import annotations

from types import MappingProxyType

from txblocks.spec.models import ModelSpec
from txblocks.train.tasks.addition import AdditionTask
from txblocks.train.tasks.base import Batch, Example, LabelledTask, Task, TrainError, unknown_task
from txblocks.train.tasks.copying import CopyTask
from txblocks.train.tasks.reversal import ReverseTask
from txblocks.train.tasks.shapes import ShapesTask
from txblocks.train.tasks.sortedness import SortedTask
from txblocks.train.tasks.textfile import TextFileTask

__all__ = [
    "DEFAULT_TASKS",
    "TASKS",
    "AdditionTask",
    "Batch",
    "CopyTask",
    "Example",
    "LabelledTask",
    "ReverseTask",
    "ShapesTask",
    "SortedTask",
    "Task",
    "TextFileTask",
    "TrainError",
    "check_fits",
    "make_task",
]

#: The built-in tasks by name; ``TASKS[name].for_spec(spec)`` makes one with its defaults.
TASKS: MappingProxyType[str, type[LabelledTask]] = MappingProxyType({
    task.name: task for task in (AdditionTask, CopyTask, SortedTask, ReverseTask, ShapesTask)
})

#: The task each arch trains on when none is named.
DEFAULT_TASKS: MappingProxyType[str, str] = MappingProxyType({
    "decoder": "addition", "encoder": "sorted", "seq2seq": "reverse", "vit": "shapes",
})


def make_task(name: str | None, spec: ModelSpec) -> Task:
    """The built-in task ``name`` (default: the one for the spec's arch), checked against it.

    Raises:
        TrainError: an unknown name, a task for another arch, or a spec that does not fit
            (every problem listed, with what to change).
    """
    if name is None:
        if spec.arch not in DEFAULT_TASKS:
            raise TrainError(f"no built-in task trains arch {spec.arch!r}; pass a Task")
        name = DEFAULT_TASKS[spec.arch]
    if name not in TASKS:
        raise unknown_task(name, list(TASKS))
    task = TASKS[name].for_spec(spec)
    check_fits(task, spec)
    return task


def check_fits(task: Task, spec: ModelSpec) -> None:
    """Raise :class:`TrainError` listing why ``spec`` cannot train on ``task``, if it cannot."""
    label = f"spec {spec.name!r}"
    if spec.arch not in task.archs:
        fitting = [n for n, cls in TASKS.items() if spec.arch in cls.archs]
        raise TrainError(
            f"task {task.name!r} trains {' or '.join(task.archs)} models, but {label} is "
            f"arch {spec.arch!r}; tasks for {spec.arch}: {', '.join(fitting) or 'none'}"
        )
    problems = task.check(spec)
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise TrainError(f"{label} cannot train on task {task.name!r}:\n{lines}")
