"""Fixtures: a fresh vhost per test run, apps on it, and a real Celery worker."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

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


@pytest.fixture(scope="session")
def worker(url: str) -> Iterator[subprocess.Popen]:
    """A real Celery worker (prefork, 2 processes) running tests/tasks_app.py."""
    os.environ["CAR_TEST_URL"] = url  # before tests.tasks_app is imported here
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = open(ROOT / ".pytest_cache" / "worker.log", "w") if (ROOT / ".pytest_cache").is_dir() \
        else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "tests.tasks_app", "worker", "--pool=prefork",
         "--concurrency=2", "--loglevel=INFO", "--without-gossip", "--without-mingle",
         "--without-heartbeat", "-n", f"car-test-{os.getpid()}@%h"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    from tests.tasks_app import app as tasks
    assert tasks.conf.broker_url == url
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        try:
            if tasks.control.ping(timeout=0.5):
                break
        except Exception:
            pass
        if time.monotonic() > deadline:
            proc.terminate()
            raise RuntimeError("worker did not answer ping within 60 s")
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
