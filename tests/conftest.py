"""Fixtures: a fresh vhost per test run, apps on it, and a real Celery worker."""
from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import pytest
from celery import Celery

from tests import broker

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def vhost() -> Iterator[str]:
    """A vhost of this test run alone: runs cannot see each other's queues."""
    name = broker.new_vhost()
    yield name
    broker.delete_vhost(name)


@pytest.fixture(scope="session")
def url(vhost: str) -> str:
    return broker.url_for(vhost)


def make_app(url: str, **conf: object) -> Celery:
    app = Celery("tests", broker=url, backend=url, set_as_current=False)
    if broker.MANAGEMENT_PORT != 15672:
        # Another broker than the shared node: its API is not at the AMQP host's 15672.
        # No credentials in it: the backend then logs in with the AMQP URL's, as it
        # does with the API it derives.
        conf.setdefault("amqp_results_management_url",
                        f"http://{broker.HOST}:{broker.MANAGEMENT_PORT}/")
    app.conf.update(broker_connection_retry_on_startup=True, **conf)
    return app


@pytest.fixture
def app(url: str) -> Iterator[Celery]:
    app = make_app(url)
    yield app
    app.backend.close()


@pytest.fixture
def backend(app: Celery):
    return app.backend


def worker_log(log_name: str) -> Path:
    """Where running_worker writes the log ``log_name``: under .pytest_cache, with the
    pytest-xdist process's name in it (each process has its own session worker)."""
    xdist = os.environ.get("PYTEST_XDIST_WORKER")
    return ROOT / ".pytest_cache" / (f"{Path(log_name).stem}-{xdist}.log" if xdist
                                     else log_name)


@contextlib.contextmanager
def running_worker(module: str, url: str, log_name: str, *args: str,
                   node_prefix: str = "car-test", env: Optional[Dict[str, str]] = None,
                   client: Optional[Celery] = None) -> Iterator[Any]:
    """A real Celery worker for ``module`` (its ``app``), answering ping, stopped at the end.

    Yields the module's app, imported in this process after CAR_TEST_URL was set, or
    ``client`` if given (then the module is not imported here).  ``env`` is added to
    the worker's environment only.  The ping goes to this worker's own node name:
    other workers may share the vhost.
    """
    os.environ["CAR_TEST_URL"] = url  # before the tasks module is imported here
    env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    # The log is always written: a test may read it (a clean checkout has no cache dir yet).
    cache = ROOT / ".pytest_cache"
    cache.mkdir(exist_ok=True)
    log: Any = open(worker_log(log_name), "w")
    node = f"{node_prefix}-{os.getpid()}@localhost"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", module, "worker", "--loglevel=INFO",
         "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", node, *args],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    tasks = client if client is not None else importlib.import_module(module).app
    try:
        assert tasks.conf.broker_url == url
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"worker {node} exited with {proc.returncode}")
            try:
                if tasks.control.ping(destination=[node], timeout=0.5):
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {node} did not answer ping within 60 s")
        yield tasks
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM (a worker's warm shutdown), then SIGKILL if it is not gone in 30 s."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def worker(url: str) -> Iterator[Any]:
    """A real Celery worker (prefork, 2 processes) running tests/tasks_app.py."""
    with running_worker("tests.tasks_app", url, "worker.log",
                        "--pool=prefork", "--concurrency=2") as tasks:
        yield tasks
