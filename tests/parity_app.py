"""Tasks the parity tests run: one worker per result backend (this one, and redis://).

The worker finds its broker in CAR_TEST_URL, its result backend in
CAR_PARITY_BACKEND and its task queue in CAR_PARITY_QUEUE (so the suite's other
workers on the same vhost never take these tasks).  The test process builds its
client apps with ``make_app`` for each backend.
"""
from __future__ import annotations

import os
import time
from typing import Any, List, Optional

from celery import Celery


def make_app(broker: str, backend: str, queue: str) -> Celery:
    """An app with the parity tasks, its results in ``backend``, its tasks on ``queue``."""
    app = Celery("parity", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_prefetch_multiplier=1,
        task_default_queue=queue,
    )

    @app.task(name="parity.add", shared=False)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="parity.fail", shared=False)
    def fail(*values: Any, message: str = "hdr") -> None:
        """Fails with ValueError(message), whatever a chain passed it."""
        raise ValueError(message)

    @app.task(name="parity.collect", shared=False)
    def collect(values: List[Any]) -> List[Any]:
        return values

    @app.task(name="parity.ran", shared=False)
    def ran(path: str, index: int) -> int:
        """Appends ``index`` to ``path`` when it runs: the test sees which header tasks ran."""
        with open(path, "a") as handle:
            handle.write(f"{index}\n")
        return index

    @app.task(name="parity.log_error", shared=False)
    def log_error(request: Any, *exc_info: Any, path: str) -> str:
        """An errback appending the failed task's id to ``path``."""
        task_id = str(getattr(request, "id", request))
        with open(path, "a") as handle:
            handle.write(f"{task_id}\n")
        return task_id

    @app.task(name="parity.sleep", shared=False)
    def sleep(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    return app


def _app_from_environment() -> Optional[Celery]:
    broker, backend = os.environ.get("CAR_TEST_URL"), os.environ.get("CAR_PARITY_BACKEND")
    if not broker or not backend:
        return None
    return make_app(broker, backend, os.environ.get("CAR_PARITY_QUEUE", "parity"))


#: The worker's app (``celery -A tests.parity_app worker``).
app = _app_from_environment()
