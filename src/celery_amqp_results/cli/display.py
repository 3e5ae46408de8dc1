"""How ``watch`` shows progress: a live rich bar on a terminal, plain lines elsewhere.

rich is an extra (``celery-amqp-results[cli]``): a worker or a client never needs it,
and without it a terminal gets the plain lines too.

Both read the same Tally.  The plain display prints a line at most every
``interval`` seconds (and when the last task finishes), so a log or a pipe gets
a few readable lines instead of a redrawn bar.
"""
from __future__ import annotations

import sys
from typing import Any, Optional, Tuple

import click

from .tally import Tally, progress_line, seconds


class PlainDisplay:
    """Progress as a line of text now and then."""

    def __init__(self, tally: Tally, interval: float) -> None:
        self.tally = tally
        self.interval = interval
        self._last_at: Optional[float] = None
        self._last_counts: Optional[Tuple[int, int, int]] = None

    def start(self) -> None:
        self._print()

    def update(self) -> None:
        """Something finished: print if a line is due, or if it was the last one."""
        if self.tally.pending == 0 or self._due():
            self._print()

    def tick(self) -> None:
        """Called about every second while nothing arrives."""
        if self._due():
            self._print()

    def stop(self) -> None:
        """Print the final counts, unless the last line already showed them."""
        if self._counts() != self._last_counts:
            self._print()

    def _counts(self) -> Tuple[int, int, int]:
        return self.tally.succeeded, self.tally.failed, self.tally.pending

    def _due(self) -> bool:
        return self._last_at is None or self.tally.clock() - self._last_at >= self.interval

    def _print(self) -> None:
        self._last_at = self.tally.clock()
        self._last_counts = self._counts()
        click.echo(f"[{seconds(self.tally.elapsed)}] {progress_line(self.tally)}")


class RichDisplay:
    """A live progress bar with counts, rate and ETA (rich, on a terminal)."""

    def __init__(self, tally: Tally, console: Any) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.tally = tally
        self.progress = Progress(
            TextColumn("[bold]watching"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/]"
                       " {task.fields[pending]} pending"),
            TextColumn("{task.fields[rate]}/s ETA {task.fields[eta]}"),
            TimeElapsedColumn(),
            console=console, transient=False)
        self.task_id = self.progress.add_task(
            "watching", total=tally.total, completed=tally.done, **self._fields())

    def _fields(self) -> dict:
        rate = self.tally.rate
        return {"ok": self.tally.succeeded, "failed": self.tally.failed,
                "pending": self.tally.pending,
                "rate": "?" if rate is None else f"{rate:.1f}",
                "eta": seconds(self.tally.eta)}

    def start(self) -> None:
        self.progress.start()

    def update(self) -> None:
        self.progress.update(self.task_id, completed=self.tally.done, **self._fields())

    def tick(self) -> None:
        self.update()  # rate and ETA move on even when nothing arrives

    def stop(self) -> None:
        self.update()
        self.progress.stop()


def make_display(tally: Tally, plain: bool, interval: float) -> Any:
    """A rich bar when stdout is a terminal, ``plain`` is not asked and rich is
    installed; else plain lines."""
    if not plain and sys.stdout.isatty():
        try:
            from rich.console import Console
        except ImportError:
            return PlainDisplay(tally, interval)

        console = Console(highlight=False)
        if console.is_terminal and not console.is_dumb_terminal:
            return RichDisplay(tally, console)
    return PlainDisplay(tally, interval)
