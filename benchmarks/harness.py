"""What benchmarks/run.py and benchmarks/load.py share: the broker and a real worker.

* ``amqp_url(vhost)``: the guest URL of a vhost on the local RabbitMQ;
* ``rabbitmqctl(...)``, ``delete_vhost(name)``: the broker's command line;
* ``start_worker(...)``, ``wait_for_ping(...)``, ``stop_worker(proc)``: a
  ``celery -A bench_tasks worker`` subprocess (prefork, concurrency 2) in a session
  of its own, so that stopping it also ends its pool children;
* ``close_app(app)``: best-effort close of an app's connections and its backend's.

Each script does its own warm-up once ``wait_for_ping`` returns.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from celery import Celery

#: This folder: the worker runs here and imports ``bench_tasks`` from it.
HERE = Path(__file__).resolve().parent
#: The broker, from the same variables as the tests (tests/broker.py), so that
#: ``eval "$(scripts/rabbitmq4 env)"`` points a benchmark at the RabbitMQ 4.0 node too.
RABBIT_HOST = (f"{os.environ.get('CAR_TEST_HOST', '127.0.0.1')}:"
               f"{os.environ.get('CAR_TEST_PORT', '5672')}")
RABBITMQCTL: List[str] = (shlex.split(os.environ["CAR_TEST_RABBITMQCTL"])
                          if os.environ.get("CAR_TEST_RABBITMQCTL")
                          else [shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"])


def amqp_url(vhost: str) -> str:
    """The guest URL of ``vhost`` on the local RabbitMQ (broker and results alike)."""
    return f"amqp://guest:guest@{RABBIT_HOST}/{vhost}"


def rabbitmqctl(*args: str, timeout: float = 600) -> str:
    """Run ``rabbitmqctl *args``; its standard output.  Raises if it fails or times out."""
    return subprocess.run([*RABBITMQCTL, *args], check=True, capture_output=True, text=True,
                          timeout=timeout).stdout


def delete_vhost(name: str) -> None:
    """Delete vhost ``name``, best effort: a failure is a warning on stderr."""
    try:
        rabbitmqctl("delete_vhost", name)
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"warning: could not delete vhost {name}: {exc}", file=sys.stderr)


def start_worker(broker: str, backend: str, log_path: Path, name: str,
                 conf: Optional[Dict[str, Any]] = None) -> subprocess.Popen:
    """Start ``celery -A bench_tasks worker`` (prefork, concurrency 2) as node ``name``.

    The worker finds ``broker``, ``backend`` and ``conf`` in its environment (see
    bench_tasks), writes its output to ``log_path`` and runs in a session of its own
    (its process group is the worker and its pool children, see ``stop_worker``).
    """
    env = dict(os.environ, BENCH_BROKER=broker, BENCH_BACKEND=backend,
               BENCH_CONF=json.dumps(conf or {}),
               PYTHONPATH=os.pathsep.join(filter(None, [str(HERE),
                                                        os.environ.get("PYTHONPATH")])))
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "bench_tasks", "worker", "--pool=prefork",
             "--concurrency=2", "--loglevel=WARNING", "--without-gossip", "--without-mingle",
             "--without-heartbeat", "-n", name],
            cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_ping(app: Celery, proc: subprocess.Popen, limit: float = 60) -> None:
    """Until the worker answers ``app.control.ping``; raises if it exits or ``limit`` s pass."""
    deadline = time.monotonic() + limit
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with status {proc.returncode} (see its log)")
        try:
            if app.control.ping(timeout=0.5):
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker did not answer a ping within {limit:g} s")


def stop_worker(proc: subprocess.Popen) -> None:
    """Warm shutdown (SIGTERM), 20 s to finish, then SIGKILL to its process group."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    try:  # the group is the worker and its pool children; it was started as a session
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout=20)


def close_app(app: Celery) -> None:
    """Close the app's connections (and the backend's own, where it has a close())."""
    for owner in (app.backend, app):
        try:
            close = getattr(owner, "close", None)
            if close is not None:
                close()
        except Exception:  # closing is best effort
            pass
