"""The broker restarts: what survives it, and how waiting clients live through it.

Every test here runs against a private RabbitMQ node (tests/private_node.py) that
it stops and starts at will; the shared node on 127.0.0.1:5672 is never touched.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
import uuid
from typing import Any, Dict, Iterator, List

import pytest
from celery import Celery, states
from celery.exceptions import TimeoutError as CeleryTimeoutError

from celery_amqp_results import AMQPBackend
from tests.private_node import PrivateNode

TASK_QUEUE_PREFIX = "celery-results.task."

#: What each test measured, printed (run with -s) so the numbers can be reported.
MEASURED: Dict[str, float] = {}


@pytest.fixture(scope="module")
def node() -> Iterator[PrivateNode]:
    """One private RabbitMQ node for this module, removed (data and all) at the end."""
    private = PrivateNode()
    try:
        private.start()
        MEASURED["first start (s)"] = private.last_start_seconds or 0.0
        yield private
    finally:
        private.destroy()
        for name, value in MEASURED.items():
            print(f"[test_restart] {name}: {value:.2f}")


@pytest.fixture
def running(node: PrivateNode) -> PrivateNode:
    """The private node, running (a test that failed half-way may have left it down)."""
    node.start()
    return node


@contextlib.contextmanager
def celery_app(node: PrivateNode, **conf: Any) -> Iterator[Celery]:
    """A Celery app whose broker and result backend are the private node; closed after."""
    app = Celery("t", broker=node.url, backend=node.url, set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=True, **conf)
    try:
        assert isinstance(app.backend, AMQPBackend)
        yield app
    finally:
        app.backend.close()


def restart(node: PrivateNode, label: str) -> None:
    node.stop()
    node.start()
    MEASURED[f"{label}: stop (s)"] = node.last_stop_seconds or 0.0
    MEASURED[f"{label}: start until AMQP accepted (s)"] = node.last_start_seconds or 0.0


def stored_queues(node: PrivateNode, task_ids: List[str]) -> Dict[str, Dict[str, Any]]:
    """The result queues of ``task_ids`` on the node, by task id (rabbitmqctl)."""
    wanted = {TASK_QUEUE_PREFIX + task_id: task_id for task_id in task_ids}
    return {wanted[q["name"]]: q for q in node.queues() if q["name"] in wanted}


def store_successes(app: Celery, count: int) -> Dict[str, Any]:
    """Store ``count`` SUCCESS results with distinct values; return them by task id."""
    backend = app.backend
    expected: Dict[str, Any] = {}
    for index in range(count):
        task_id = str(uuid.uuid4())
        value = {"index": index, "text": f"value-{index}", "items": [index, index * 2]}
        backend.store_result(task_id, value, states.SUCCESS)
        expected[task_id] = value
    return expected


def test_results_survive_broker_restart(running: PrivateNode) -> None:
    node = running
    failed_id, progress_id = str(uuid.uuid4()), str(uuid.uuid4())
    progress = {"done": 3, "total": 10}
    with celery_app(node) as app:
        assert app.backend.persistent is True
        successes = store_successes(app, 1000)
        app.backend.mark_as_failure(failed_id, ValueError("boom"))
        app.backend.store_result(progress_id, progress, "PROGRESS")

    restart(node, "persistent test restart")

    all_ids = [*successes, failed_id, progress_id]
    queues = stored_queues(node, all_ids)
    assert len(queues) == 1002
    assert all(q["durable"] and q["messages"] == 1 for q in queues.values())

    read = 0
    with celery_app(node) as app:
        began = time.monotonic()
        for task_id, value in successes.items():
            meta = app.backend.get_task_meta(task_id, cache=False)
            assert meta["status"] == states.SUCCESS, (task_id, meta)
            assert meta["result"] == value
            read += 1
        failed = app.AsyncResult(failed_id)
        assert failed.state == states.FAILURE
        assert isinstance(failed.result, ValueError)
        assert str(failed.result) == "boom"
        read += 1
        in_progress = app.AsyncResult(progress_id)
        assert in_progress.state == "PROGRESS"
        assert in_progress.info == progress
        read += 1
        MEASURED["persistent test: reading the 1002 results (s)"] = time.monotonic() - began
    assert read == 1000 + 2


def test_transient_results_do_not_survive(running: PrivateNode) -> None:
    node = running
    failed_id, progress_id = str(uuid.uuid4()), str(uuid.uuid4())
    with celery_app(node, result_persistent=False) as app:
        assert app.backend.persistent is False
        successes = store_successes(app, 200)
        app.backend.mark_as_failure(failed_id, ValueError("boom"))
        app.backend.store_result(progress_id, {"done": 3}, "PROGRESS")
        # Stored for real before the restart: readable by anyone.
        some_id, some_value = next(iter(successes.items()))
        assert app.backend.get_task_meta(some_id, cache=False)["result"] == some_value
        assert app.AsyncResult(failed_id).state == states.FAILURE

    restart(node, "transient test restart")

    all_ids = [*successes, failed_id, progress_id]
    queues = stored_queues(node, all_ids)
    # The queues are durable and come back; the transient messages in them do not.
    assert len(queues) == 202
    assert all(q["durable"] and q["messages"] == 0 for q in queues.values())

    # A PENDING read of a queue that survived empty reads it amqp_results_peek_attempts
    # times (another reader might hold the message).  Measured once with the default;
    # the 202 reads below read once each to keep the test short.
    with celery_app(node, result_persistent=False) as app:
        began = time.monotonic()
        assert app.backend.get_task_meta(failed_id, cache=False)["status"] == states.PENDING
        MEASURED["transient test: one PENDING read, default peek attempts (s)"] = \
            time.monotonic() - began

    pending = 0
    with celery_app(node, result_persistent=False, amqp_results_peek_attempts=1) as app:
        began = time.monotonic()
        for task_id in all_ids:
            meta = app.backend.get_task_meta(task_id, cache=False)
            assert meta["status"] == states.PENDING, (task_id, meta)
            assert meta["result"] is None
            pending += 1
        MEASURED["transient test: 202 PENDING reads, one read each (s)"] = \
            time.monotonic() - began
    assert pending == 200 + 2


def _get_in_thread(app: Celery, task_id: str, timeout: float,
                   outcome: Dict[str, Any]) -> threading.Thread:
    """Start a thread calling ``AsyncResult(task_id).get(timeout)``; fills ``outcome``."""
    def run() -> None:
        began = time.monotonic()
        outcome["began"] = began
        try:
            outcome["value"] = app.AsyncResult(task_id).get(timeout=timeout)
        except BaseException as exc:
            outcome["error"] = exc
            outcome["traceback"] = traceback.format_exc()
        finally:
            outcome["ended"] = time.monotonic()
            outcome["elapsed"] = outcome["ended"] - began
            app.backend.close()  # this thread's backend and waiter connection

    thread = threading.Thread(target=run, name=f"get-{task_id}", daemon=True)
    thread.start()
    return thread


def test_waiter_reconnects_and_keeps_deadline(running: PrivateNode,
                                              caplog: pytest.LogCaptureFixture) -> None:
    node = running
    task_id = str(uuid.uuid4())
    deadline = 25.0
    outcome: Dict[str, Any] = {}
    caplog.set_level(logging.WARNING, logger="celery_amqp_results.waiter")
    with celery_app(node) as app:
        thread = _get_in_thread(app, task_id, deadline, outcome)
        time.sleep(1.0)
        assert thread.is_alive(), outcome.get("traceback")
        restart(node, "waiter test restart")
        with celery_app(node) as writer:
            writer.backend.store_result(task_id, {"answer": 42}, states.SUCCESS)
        stored = time.monotonic()
        thread.join(timeout=deadline + 10)
        assert not thread.is_alive(), "get() still waiting past its deadline"

    MEASURED["waiter test: get() total (s)"] = outcome["elapsed"]
    MEASURED["waiter test: get() returned after the store (s)"] = outcome["ended"] - stored
    if "error" in outcome:
        raise AssertionError(f"get() raised:\n{outcome['traceback']}") from outcome["error"]
    assert outcome["value"] == {"answer": 42}
    # It lived through the restart and returned as soon as the result was there,
    # well before its deadline.
    assert outcome["ended"] - stored < 5.0
    assert outcome["elapsed"] < deadline
    assert any(r.name == "celery_amqp_results.waiter" and r.levelno >= logging.WARNING
               for r in caplog.records), "the waiter never noticed the broker going away"


def test_deadline_holds_across_restart(running: PrivateNode) -> None:
    """A restart in the middle of a wait neither resets nor stretches its deadline."""
    node = running
    task_id = str(uuid.uuid4())
    timeout = 10.0
    outcome: Dict[str, Any] = {}
    with celery_app(node) as app:
        thread = _get_in_thread(app, task_id, timeout, outcome)
        time.sleep(1.0)
        restart(node, "deadline test restart")
        thread.join(timeout=timeout + 20)
        assert not thread.is_alive(), "get(timeout=10) still waiting 30 s later"

    MEASURED["deadline test: get(timeout=10) across a restart took (s)"] = outcome["elapsed"]
    error = outcome.get("error")
    if error is not None and not isinstance(error, CeleryTimeoutError):
        raise error
    assert isinstance(error, CeleryTimeoutError), f"get() returned {outcome.get('value')!r}"
    assert timeout - 0.1 <= outcome["elapsed"] < timeout + 2.0


def test_timeout_while_broker_down(running: PrivateNode) -> None:
    node = running
    task_id = str(uuid.uuid4())
    timeout = 3.0
    outcome: Dict[str, Any] = {}
    with celery_app(node) as app:
        node.stop()
        try:
            thread = _get_in_thread(app, task_id, timeout, outcome)
            thread.join(timeout=timeout + 20)
            hung = thread.is_alive()
        finally:
            node.start()
        if hung:
            thread.join(timeout=60)
        assert not hung, "get(timeout=3) was still waiting 23 s later"

    MEASURED["timeout test: get(timeout=3) took (s)"] = outcome["elapsed"]
    error = outcome.get("error")
    if error is not None and not isinstance(error, CeleryTimeoutError):
        raise error  # what get() raised instead, with the waiting thread's traceback
    assert isinstance(error, CeleryTimeoutError), f"get() returned {outcome.get('value')!r}"
    assert outcome["elapsed"] < timeout + 5.0
