"""The Celery app and tasks that benchmarks/run.py and load.py send to a real worker.

``make_app(broker, backend)`` builds an app for one peer (the benchmark process
builds one per peer).  A worker is started with ``-A bench_tasks`` (by
``harness.start_worker``) and finds its broker, result backend and extra settings
in the environment (BENCH_BROKER, BENCH_BACKEND, BENCH_CONF as JSON), so it uses
exactly what the benchmark uses.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional

from celery import Celery


def make_app(broker: str, backend: str, conf: Optional[Dict[str, Any]] = None) -> Celery:
    """An app with the benchmark's three tasks, talking to ``broker`` and ``backend``."""
    app = Celery("bench", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        **(conf or {}),
    )

    @app.task(name="bench.add", shared=False)
    def add(x: int, y: int) -> int:
        """The trivial task timed by group(N).get() and the round trip."""
        return x + y

    @app.task(name="bench.stamp", shared=False)
    def stamp() -> float:
        """A chord header task: returns the time it ran (its completion, give or take)."""
        return time.time()

    @app.task(name="bench.chord_body", shared=False)
    def chord_body(stamps: List[float]) -> Dict[str, float]:
        """A chord body: the time it started and the latest header completion time."""
        return {"body_started": time.time(), "last_header": max(stamps)}

    return app


def _app_from_environment() -> Optional[Celery]:
    broker = os.environ.get("BENCH_BROKER")
    backend = os.environ.get("BENCH_BACKEND")
    if not broker or not backend:
        return None
    return make_app(broker, backend, json.loads(os.environ.get("BENCH_CONF") or "{}"))


#: The worker's app (``celery -A bench_tasks worker``); None when imported by run.py or load.py.
app = _app_from_environment()
