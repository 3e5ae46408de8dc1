"""A Celery app whose result backend is a different broker than its task broker.

CAR_TEST_URL is the task broker (the shared node), CAR_TEST_BACKEND_URL the result
backend (a private node the test can refuse logins on, stop and start).
"""
from __future__ import annotations

import os

from celery import Celery

from tests import broker

url = os.environ.get("CAR_TEST_URL", broker.DEFAULT_URL)
backend_url = os.environ.get("CAR_TEST_BACKEND_URL", url)
app = Celery("fault_tasks_app", broker=url, backend=backend_url)
app.conf.update(
    # Its own task queue: the session's worker (tests/tasks_app.py) consumes "celery"
    # on the same vhost, and would take these tasks as unregistered ones.
    task_default_queue="fault-tasks",
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task
def add(x: int, y: int) -> int:
    return x + y
