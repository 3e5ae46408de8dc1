"""The demo's Celery app and tasks.

Broker and result backend are the same plain ``amqp://`` URL: Celery finds this
package's backend through its ``celery.result_backends`` entry point.
"""
from __future__ import annotations

import os
import time

from celery import Celery

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/celery-amqp-results-demo"
URL = os.environ.get("DEMO_URL", DEFAULT_URL)

app = Celery("demo", broker=URL, backend=URL)
app.conf.update(
    task_track_started=True,
    result_extended=True,
    broker_connection_retry_on_startup=True,
)

STEP_SECONDS = 0.2


@app.task
def add(x, y):
    return x + y


@app.task(bind=True)
def crunch(self, steps):
    """Work in ``steps`` steps, reporting a PROGRESS state before each one."""
    total = 0
    for i in range(1, steps + 1):
        self.update_state(state="PROGRESS", meta={"step": i, "of": steps})
        time.sleep(STEP_SECONDS)
        total += i * i
    return {"steps": steps, "sum_of_squares": total}


@app.task
def explode(msg):
    raise ValueError(msg)
