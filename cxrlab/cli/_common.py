"""Helpers shared by CLI modules: console, progress bars, ``--set key=value`` parsing."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()


def progress() -> Progress:
    """The one progress-bar style cxrlab uses for long work."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=False,
    )


def stage_callback(bar: Progress):
    """A library ``progress(stage, done, total, status)`` callback drawing one bar per stage on ``bar``."""
    tasks: dict[str, int] = {}

    def report(stage: str, done: int, total: int, status: str) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total, status="")
        bar.update(tasks[stage], completed=done, total=total, status=status)

    return report
