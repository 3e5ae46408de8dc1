"""Tasks for a worker whose results use the Celery 4 topology (amqp_results_topology).

Configured from the environment like tests/tasks_app.py: CAR_TEST_URL is the
broker and the result backend.  The tasks have explicit names so that a client
on another app (or on Celery 4.4) can send them by name.
"""
from __future__ import annotations

import os

from celery import Celery

from tests import broker

url = os.environ.get("CAR_TEST_URL", broker.DEFAULT_URL)
app = Celery("tasks_celery4", broker=url, backend=url)
app.conf.update(
    amqp_results_topology="celery4",
    task_track_started=True,
    result_extended=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # Its own queue: the suite's other worker (tests/tasks_app.py) must not take these.
    task_default_queue="celery4-compat",
)


@app.task(name="compat.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="compat.fail")
def fail(message: str) -> None:
    raise ValueError(message)


@app.task(name="compat.progress", bind=True)
def progress(self, steps: int) -> int:
    for step in range(steps):
        self.update_state(state="PROGRESS", meta={"step": step})
    return steps


@app.task(name="compat.total")
def total(values: list) -> int:
    return sum(values)
