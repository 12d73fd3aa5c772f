"""Progress for long steps, on stderr so ``--json`` output on stdout stays clean; silent with ``--quiet``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


class Reporter:
    """``with reporter.step("Converting"):`` shows a spinner, then a tick with the elapsed time.
    ``reporter.bar(total, description)`` gives an object with ``advance()`` for counted work."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)

    def info(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message)

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        if self.quiet:
            yield
            return
        start = time.perf_counter()
        with self.console.status(description + "...", spinner="dots"):
            yield
        self.console.print(f"[green]\u2713[/] {description} ({time.perf_counter() - start:.1f} s)")

    @contextlib.contextmanager
    def bar(self, total: int | None, description: str) -> Iterator[_Bar]:
        if self.quiet:
            yield _Bar(None, None)
            return
        progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=self.console, transient=False,
        )
        with progress:
            task = progress.add_task(description, total=total, status="")
            yield _Bar(progress, task)


class _Bar:
    def __init__(self, progress: Progress | None, task) -> None:
        self._progress, self._task = progress, task

    def advance(self, amount: int = 1, status: str | None = None) -> None:
        if self._progress is not None:
            if status is None:
                self._progress.update(self._task, advance=amount)
            else:
                self._progress.update(self._task, advance=amount, status=status)

