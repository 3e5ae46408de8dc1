"""The Celery app and tasks that the end-to-end tests run in a real worker.

Configured from the environment so the test process and the worker share one
vhost: CAR_TEST_URL is the broker and the result backend.
"""
from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

from tests import broker

url = os.environ.get("CAR_TEST_URL", broker.DEFAULT_URL)
app = Celery("tasks_app", broker=url, backend=url)
app.conf.update(
    task_track_started=True,
    result_extended=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def fail(message: str) -> None:
    raise ValueError(message)


@app.task(bind=True)
def progress(self, steps: int, delay: float = 0.0) -> int:
    for step in range(steps):
        self.update_state(state="PROGRESS", meta={"step": step, "of": steps})
        if delay:
            time.sleep(delay)
    return steps


@app.task
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task
def total(values: list) -> int:
    return sum(values)


@app.task
def spawn(count: int) -> int:
    for i in range(count):
        add.delay(i, i)
    return count


# A small ceiling so the oversized-result test needs no 128 MiB payload.
app.conf.amqp_results_max_result_size = 1_000_000


@app.task
def big(size: int) -> str:
    return "x" * size


# -- chords ------------------------------------------------------------------------------------

@app.task
def collect(values: list) -> list:
    """A chord body that returns what it was given, to check values and their order."""
    return values


@app.task
def slow_add(x: int, y: int, delay: float) -> int:
    time.sleep(delay)
    return x + y


@app.task
def log_run(values: list, path: str) -> list:
    """A chord body that appends a line to ``path`` each time it runs."""
    with open(path, "a") as handle:
        handle.write(f"{values!r}\n")
    return values


@app.task
def log_error(request: Any, *exc_info: Any, path: str) -> str:
    """An errback that appends the failed task's id to ``path``.

    Celery calls it with ``(request, exc, traceback)`` (its varargs make every
    Celery 5 version see it as a new-style errback, run in the worker).
    """
    task_id = str(getattr(request, "id", request))
    with open(path, "a") as handle:
        handle.write(f"{task_id}\n")
    return task_id


@app.task(bind=True)
def add_more(self, count: int) -> int:
    """A header task that makes its chord wait for ``count`` more tasks."""
    for i in range(count):
        self.add_to_chord(add.s(100, i))
    return -count


@app.task(bind=True)
def replace_with(self, x: int, as_group: bool = False):
    """A header task that replaces itself with a task, or with a group."""
    if as_group:
        from celery import group
        return self.replace(group(add.s(x, 1), add.s(x, 2)))
    return self.replace(add.s(x, 1000))


@app.task(bind=True, acks_late=True, reject_on_worker_lost=True)
def die_once(self, value: int, marker: str) -> int:
    """Returns ``value``; its first run reports its chord part, then kills its process.

    That is a worker lost after the part was recorded and before the task
    message was acknowledged: the broker redelivers the task (acks_late), and
    its second run reports the same part again.
    """
    if not os.path.exists(marker):
        with open(marker, "w") as handle:
            handle.write(self.request.id)
        # What the worker does after a task returns (Backend.mark_as_done), but
        # without storing the result, so Celery sees no SUCCESS and redelivers.
        self.backend.on_chord_part_return(self.request, "SUCCESS", value)
        os._exit(17)
    return value
