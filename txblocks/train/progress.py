"""What a training run shows: a rich progress bar, log lines off a terminal, a final table."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.progress import TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from txblocks.train.tasks.base import Example

__all__ = ["TrainProgress", "examples_table"]


def _rate(tokens_per_second: float) -> str:
    for suffix in ("", "K", "M", "G"):
        if tokens_per_second < 1000:
            return f"{tokens_per_second:.1f}{suffix}"
        tokens_per_second /= 1000
    return f"{tokens_per_second:.1f}T"


class TrainProgress:
    """A progress bar with loss, accuracy and tokens/s; on a console that is not a terminal
    (a log file, CI), about ten plain lines instead."""

    def __init__(self, console: Console, steps: int, title: str) -> None:
        self.console, self.steps = console, steps
        self.live = console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  acc {task.fields[acc]}  "
                       "{task.fields[rate]} tok/s"),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=console, disable=not self.live,
        )
        self.bar = self.progress.add_task(title, total=steps, loss="-", acc="-", rate="-")
        self.every = max(1, steps // 10)

    def __enter__(self) -> TrainProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, step: int, loss: float, accuracy: float, tokens_per_second: float) -> None:
        """Show the state after ``step`` steps (1-based)."""
        fields = {"loss": f"{loss:.4f}", "acc": f"{accuracy:.1%}", "rate": _rate(tokens_per_second)}
        self.progress.update(self.bar, completed=step, **fields)
        if not self.live and (step % self.every == 0 or step == self.steps):
            self.console.print(f"step {step}/{self.steps}  loss {fields['loss']}  "
                               f"acc {fields['acc']}  {fields['rate']} tok/s", highlight=False,
                               soft_wrap=True)


def examples_table(examples: Sequence[Example], title: str) -> Table:
    """Input, prediction, truth and a mark per row."""
    table = Table(title=title)
    for column in ("input", "prediction", "truth", ""):
        table.add_column(column, overflow="fold")
    for ex in examples:
        mark = "[green]✓[/]" if ex.correct else "[red]✗[/]"
        table.add_row(Text(ex.input), Text(ex.prediction), Text(ex.truth), mark)
    return table
