"""Progress for long steps, on stderr so ``--json`` output on stdout stays clean; silent with ``--quiet``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


class Bar(Protocol):
    def advance(self, amount: int = 1, status: str | None = None) -> None: ...


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
        if not self.console.is_terminal:  # a log: say what is running before it takes its time
            self.console.print(f"  {description}...")
            yield
        else:
            with self.console.status(description + "...", spinner="dots"):
                yield
        self.console.print(f"[green]\u2713[/] {description} ({time.perf_counter() - start:.1f} s)")

    @contextlib.contextmanager
    def bar(self, total: int | None, description: str) -> Iterator[Bar]:
        with self.bars((total, description)) as (bar,):
            yield bar

    @contextlib.contextmanager
    def bars(self, *tasks: tuple[int | None, str]) -> Iterator[tuple[Bar, ...]]:
        """Several counted phases of one job, one line each, shown together (one live display at a time)."""
        if self.quiet:
            yield tuple(_Bar(None, None) for _ in tasks)
            return
        if not self.console.is_terminal:  # a CI log or a pipe: a line when a phase starts and one when it ends
            lines = tuple(_LogBar(self.console, total, description) for total, description in tasks)
            yield lines
            for line in lines:
                line.finish()
            return
        progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("{task.fields[status]}"), console=self.console, transient=False,
        )
        with progress:
            # Later phases start their clocks when they first advance.
            yield tuple(_Bar(progress, progress.add_task(description, total=total, status="", start=i == 0))
                        for i, (total, description) in enumerate(tasks))


class _Bar:
    def __init__(self, progress: Progress | None, task) -> None:
        self._progress, self._task = progress, task

    def advance(self, amount: int = 1, status: str | None = None) -> None:
        if self._progress is not None:
            self._progress.start_task(self._task)  # a later phase's clock starts when it first advances
            if status is None:
                self._progress.update(self._task, advance=amount)
            else:
                self._progress.update(self._task, advance=amount, status=status)


class _LogBar:
    """A bar for output that is not a terminal: a redrawn bar would be cut to 80 columns and keep only its last frame,
    so the log gets plain lines instead (start, the count so far every ``EVERY_S`` seconds of a long phase, then
    count, elapsed time and last status)."""

    EVERY_S = 20.0

    def __init__(self, console: Console, total: int | None, description: str) -> None:
        self._console, self._total, self._description = console, total, description
        self._done, self._status = 0, ""
        self._start: float | None = None
        self._last = 0.0
        self._finished = False

    def advance(self, amount: int = 1, status: str | None = None) -> None:
        now = time.perf_counter()
        if self._start is None:
            self._start = self._last = now
            self._console.print(f"  {self._description}...")
        self._done += amount
        if status is not None:
            self._status = status
        if self._total is not None and self._done >= self._total:
            self.finish()  # now, so phases that run one after the other log in order
        elif now - self._last >= self.EVERY_S:  # a long phase: show it is moving
            self._last = now
            count = f"{self._done}/{self._total}" if self._total is not None else str(self._done)
            status = f"  {self._status}" if self._status else ""
            self._console.print(f"  {self._description}: {count} ({now - self._start:.0f} s){status}")

    def finish(self) -> None:
        if self._start is None or self._finished:
            return  # a phase that never started (the job ended before it) says nothing
        self._finished = True
        count = f"{self._done}/{self._total}" if self._total is not None else str(self._done)
        elapsed = time.perf_counter() - self._start
        status = f"  {self._status}" if self._status else ""
        self._console.print(f"[green]\u2713[/] {self._description}: {count} ({elapsed:.1f} s){status}")
