"""Training out of the box: ``txblocks.train.run(spec)`` and ``txblocks train SPEC``.

Built-in synthetic tasks (generated at run time, no downloads) fit each arch; a plain
text file trains a decoder byte by byte. See ``docs/training.md``. Under ``torchrun`` the
same run is data-parallel (``strategy="ddp"`` or ``"fsdp"``), with gradient accumulation
and resumable checkpoints: ``docs/scale-out.md``.

Example::

    from txblocks import train
    result = train.run("examples/specs/gpt-tiny.yaml", task="addition", steps=300)
    result.model.generate(...)
"""

from txblocks.train.checkpointing import (
    disable_activation_checkpointing,
    enable_activation_checkpointing,
)
from txblocks.train.loop import run
from txblocks.train.result import TrainResult
from txblocks.train.tasks import (
    DEFAULT_TASKS,
    TASKS,
    AdditionTask,
    Batch,
    CopyTask,
    Example,
    ReverseTask,
    ShapesTask,
    SortedTask,
    Task,
    TextFileTask,
    TrainError,
    make_task,
)

__all__ = [
    "DEFAULT_TASKS",
    "TASKS",
    "AdditionTask",
    "Batch",
    "CopyTask",
    "Example",
    "ReverseTask",
    "ShapesTask",
    "SortedTask",
    "Task",
    "TextFileTask",
    "TrainError",
    "TrainResult",
    "disable_activation_checkpointing",
    "enable_activation_checkpointing",
    "make_task",
    "run",
]
