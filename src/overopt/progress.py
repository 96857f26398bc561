"""Progress bars for long stages (rich), quiet when the output is not a terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from overopt import faults, preempt

# Logs and CI are not terminals: give tables room instead of rich's 80-column fallback.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


# While runs are trained together (overopt.batching), their stages' bars feed one bar for all of them.
_shared: StageProgress | None = None


@contextlib.contextmanager
def shared_bar(bar: StageProgress) -> Iterator[None]:
    """Stages entered from here on show no bar of their own: their totals and steps go to `bar`."""
    global _shared
    previous, _shared = _shared, bar
    try:
        yield
    finally:
        _shared = previous


class StageProgress:
    """One bar per stage; `advance(**figures)` shows the latest figures beside the bar."""

    def __init__(self, description: str):
        self.description = description
        self._progress: Progress | None = None
        self._task = None
        self._feeds = None  # the shared bar this stage's steps go to

    def __enter__(self) -> StageProgress:
        preempt.check(f"{self.description!r} not started")  # SIGTERM/SIGUSR1 came: start nothing new
        if _shared is not None and _shared is not self:
            self._feeds = _shared
            return self
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
        if self._feeds is not None:
            self._feeds.grow(total)
            return
        assert self._progress is not None, "use StageProgress as a context manager"
        self._task = self._progress.add_task(self.description, total=total, figures="")

    def grow(self, total: int) -> None:
        """Add `total` steps to this bar (a stage that feeds it has started)."""
        if self._task is None:
            self.start(total)
        elif self._progress is not None:
            self._progress.update(self._task, total=self._progress.tasks[self._task].total + total)

    def advance(self, n: int = 1, **figures: float) -> None:
        faults.point(self.description)  # a unit of the stage's work is done: a moment the crash tests kill at
        if self._feeds is not None:
            self._feeds.advance(n)
            return
        if self._progress is None or self._task is None:
            return
        text = "  ".join(f"{k}={v:.3g}" for k, v in figures.items())
        self._progress.update(self._task, advance=n, **({"figures": text} if figures else {}))

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
