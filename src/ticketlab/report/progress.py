"""Progress bars on stderr (rich): one for the whole experiment, one per level, with ETAs."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


class Bars:
    """`with Bars(enabled) as bars: t = bars.add("level 3", total); bars.advance(t, n)`. Disabled, it does nothing."""

    def __init__(self, enabled: bool | None = None):
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 console=Console(stderr=True), disable=not enabled, transient=False,
                                 redirect_stdout=False, redirect_stderr=False)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def add(self, description: str, total: int) -> int:
        return self.progress.add_task(description, total=total)

    def advance(self, task: int, amount: int = 1) -> None:
        self.progress.advance(task, amount)

    def set(self, task: int, completed: int) -> None:
        self.progress.update(task, completed=completed)

    def print(self, text: str) -> None:
        """A line of results on stdout. While bars are live on the same terminal, it goes above them."""
        if not self.progress.disable and sys.stdout.isatty():
            self.progress.console.print(text, highlight=False, markup=False)
        else:
            print(text, flush=True)
