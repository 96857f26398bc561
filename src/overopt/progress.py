"""Progress bars for long stages (rich), quiet when the output is not a terminal."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from overopt import faults, preempt

# Logs and CI are not terminals: give tables room instead of rich's 80-column fallback.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class StageProgress:
    """One bar per stage; `advance(**figures)` shows the latest figures beside the bar."""

    def __init__(self, description: str):
        self.description = description
        self._progress: Progress | None = None
        self._task = None

    def __enter__(self) -> StageProgress:
        preempt.check(f"{self.description!r} not started")  # SIGTERM/SIGUSR1 came: start nothing new
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[figures]}"),
            console=console,
            transient=False,
        )
        self._progress.__enter__()
        return self

    def start(self, total: int) -> None:
        assert self._progress is not None, "use StageProgress as a context manager"
        self._task = self._progress.add_task(self.description, total=total, figures="")

    def advance(self, n: int = 1, **figures: float) -> None:
        faults.point(self.description)  # a unit of the stage's work is done: a moment the crash tests kill at
        if self._progress is None or self._task is None:
            return
        text = "  ".join(f"{k}={v:.3g}" for k, v in figures.items())
        self._progress.update(self._task, advance=n, **({"figures": text} if figures else {}))

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
