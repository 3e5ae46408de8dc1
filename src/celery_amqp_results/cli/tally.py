"""Counting a watched set of tasks: finished, failed, pending, rate and time left.

Pure bookkeeping (a clock is passed in), so the figures ``watch`` prints can be
checked without a broker.  The rate counts only tasks that finished while
watching: tasks already finished when the watch began would inflate it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from celery import states

#: Ready states that count as failed (FAILURE, REVOKED).
FAILED_STATES = frozenset(states.PROPAGATE_STATES)


@dataclass
class Tally:
    """Where each watched task stands."""

    task_ids: Sequence[str]
    clock: Callable[[], float] = time.monotonic
    #: The ready meta of each finished task, in the order they finished.
    finished: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    succeeded: int = 0
    failed: int = 0
    started_at: float = 0.0
    #: How many had finished when watching began (they do not count for the rate).
    finished_before: int = 0

    def __post_init__(self) -> None:
        self.started_at = self.clock()

    def begin(self) -> None:
        """Mark the start of waiting: what finished so far does not count for the rate."""
        self.started_at = self.clock()
        self.finished_before = len(self.finished)

    def add(self, task_id: str, meta: Dict[str, Any]) -> bool:
        """Count one ready state; False if that task was already counted."""
        if task_id in self.finished or meta.get("status") not in states.READY_STATES:
            return False
        self.finished[task_id] = meta
        if meta["status"] in FAILED_STATES:
            self.failed += 1
        else:
            self.succeeded += 1
        return True

    @property
    def total(self) -> int:
        return len(self.task_ids)

    @property
    def done(self) -> int:
        return len(self.finished)

    @property
    def pending(self) -> int:
        return self.total - self.done

    @property
    def elapsed(self) -> float:
        return max(self.clock() - self.started_at, 0.0)

    @property
    def rate(self) -> Optional[float]:
        """Tasks finished per second while watching; None before the first one."""
        fresh = self.done - self.finished_before
        elapsed = self.elapsed
        if fresh <= 0 or elapsed <= 0:
            return None
        return fresh / elapsed

    @property
    def eta(self) -> Optional[float]:
        """Seconds until all are finished at the current rate; 0 when done, None if unknown."""
        if self.pending == 0:
            return 0.0
        rate = self.rate
        return None if rate is None else self.pending / rate

    def failures(self) -> List[str]:
        """Ids of failed tasks, in the order they finished."""
        return [task_id for task_id, meta in self.finished.items()
                if meta["status"] in FAILED_STATES]

    def unfinished(self) -> List[str]:
        """Ids not finished yet, in the order they were given."""
        return [task_id for task_id in self.task_ids if task_id not in self.finished]


def seconds(value: Optional[float]) -> str:
    """``'1m05s'``, ``'4.2s'``, or ``'?'`` when unknown."""
    if value is None:
        return "?"
    if value < 10:
        return f"{value:.1f}s"
    minutes, secs = divmod(round(value), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def progress_line(tally: Tally) -> str:
    """One line of progress, the same on a terminal and in a log."""
    rate = tally.rate
    return (f"{tally.done}/{tally.total} finished: {tally.succeeded} succeeded, "
            f"{tally.failed} failed, {tally.pending} pending; "
            f"{'?' if rate is None else f'{rate:.1f}'}/s, ETA {seconds(tally.eta)}")
