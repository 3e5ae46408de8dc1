"""The Celery app and tasks that the end-to-end tests run in a real worker.

Configured from the environment so the test process and the worker share one
vhost: CAR_TEST_URL is the broker and the result backend.
"""
from __future__ import annotations

import os
import time

from celery import Celery

url = os.environ.get("CAR_TEST_URL", "amqp://guest:guest@127.0.0.1:5672//")
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
