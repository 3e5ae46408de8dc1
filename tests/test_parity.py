"""Parity with redis://: the same canvas, run by a real worker per backend, seen the same.

Celery users hold every result backend to what the Redis backend does.  Each test
here runs once with this backend and once with ``redis://`` (Redis on this
machine), through a worker of that backend (tests/parity_app.py), and asserts one
expected behaviour for both: a difference fails on one side.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Iterator, List, NamedTuple

import pytest
from celery import Celery, chain, chord
from celery.exceptions import ChordError
from celery.result import AsyncResult

from tests.conftest import running_worker
from tests.parity_app import make_app

#: Redis database the parity tests use (keys are task and group ids: runs cannot clash).
REDIS_URL = "redis://127.0.0.1:6379/7"


class Peer(NamedTuple):
    name: str
    app: Celery


@pytest.fixture(scope="module", params=["amqp", "redis"])
def peer(request: Any, url: str) -> Iterator[Peer]:
    """A worker whose results go to this backend (amqp) or to Redis, and a client app."""
    name = request.param
    backend = url if name == "amqp" else REDIS_URL
    queue = f"parity-{name}-{uuid.uuid4().hex[:8]}"
    client = make_app(url, backend, queue)
    env = {"CAR_PARITY_BACKEND": backend, "CAR_PARITY_QUEUE": queue}
    try:
        with running_worker("tests.parity_app", url, f"worker-parity-{name}.log",
                            "--pool=prefork", "--concurrency=2", f"--queues={queue}",
                            node_prefix=f"car-parity-{name}", env=env, client=client):
            yield Peer(name, client)
    finally:
        if name == "amqp":
            client.backend.close()  # Celery's RedisBackend has no close()


def sig(peer: Peer, task: str, *args: Any, **kwargs: Any) -> Any:
    return peer.app.signature(f"parity.{task}", args, kwargs)


def lines(path: Path) -> List[str]:
    return path.read_text().split() if path.exists() else []


# -- chord headers from a generator ---------------------------------------------------------

def test_generator_header_is_not_produced_before_its_first_task_is_sent(
        peer: Peer, tmp_path: Path) -> None:
    """Celery sends a generator header as it goes (#3021): it produces two items (one
    ahead, to know the last), sends the first task, then produces the rest (measured
    with Celery 5.7: the third item is produced after the first task was sent, the
    others all before the second).  So the first header task can run before the
    generator produced its third item: that item waits for it here (10 s at most)."""
    ran = tmp_path / "ran"
    first_ran_before_third: List[bool] = []

    def header() -> Iterator[Any]:
        for index in range(4):
            if index == 2:
                deadline = time.monotonic() + 10
                while "0" not in lines(ran) and time.monotonic() < deadline:
                    time.sleep(0.05)
                first_ran_before_third.append("0" in lines(ran))
            yield sig(peer, "ran", str(ran), index)

    result = chord(header(), sig(peer, "collect")).apply_async()
    assert result.get(timeout=60) == [0, 1, 2, 3]
    assert first_ran_before_third == [True], \
        f"{peer.name}: the whole header was produced before its first task was sent"


# -- a failing header task --------------------------------------------------------------------

@pytest.mark.parametrize("shape", ["task", "chain", "called", "read late", "other process"])
def test_failing_header_task_raises_its_own_exception(peer: Peer, tmp_path: Path,
                                                      shape: str) -> None:
    """``chord(...).get()`` raises the header task's own ValueError; the body's stored
    state is Celery's ChordError naming it; the body's link_error runs once.

    Shapes: a failing task, a chain ending in one, ``chord(header)(body)``, ``get()``
    once the body's state is stored, and ``get()`` of a result rebuilt from its id
    (no parents known: Celery then raises the body's own ChordError)."""
    errors = tmp_path / "errors"
    failing = (chain(sig(peer, "add", 1, 1), sig(peer, "fail", message="hdr"))
               if shape == "chain" else sig(peer, "fail", message="hdr"))
    body = sig(peer, "collect").on_error(sig(peer, "log_error", path=str(errors)))
    header = [sig(peer, "add", 2, 2), failing]
    result = (chord(header)(body) if shape == "called"
              else chord(header, body).apply_async())
    if shape == "read late":
        deadline = time.monotonic() + 30
        while not AsyncResult(result.id, app=peer.app).ready() and time.monotonic() < deadline:
            time.sleep(0.05)
    if shape == "other process":
        result = AsyncResult(result.id, app=peer.app)
    with pytest.raises(Exception) as raised:
        result.get(timeout=30)
    if shape == "other process":
        assert isinstance(raised.value, ChordError), f"{peer.name}: {raised.value!r}"
        assert "raised ValueError('hdr')" in str(raised.value)
    else:
        assert (type(raised.value), str(raised.value)) == (ValueError, "hdr"), \
            f"{peer.name}: chord(...).get() raised {raised.value!r}"

    stored = AsyncResult(result.id, app=peer.app)
    deadline = time.monotonic() + 10
    while not stored.ready() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored.state == "FAILURE"
    assert isinstance(stored.result, ChordError), f"{peer.name}: {stored.result!r}"
    assert "raised ValueError('hdr')" in str(stored.result), str(stored.result)
    deadline = time.monotonic() + 10
    while not lines(errors) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a second run of the errback would have shown by now
    assert lines(errors) == [result.id]


# -- settings Celery applies through the backend ----------------------------------------------

def test_error_callback_on_chord_header(peer: Peer, tmp_path: Path) -> None:
    """task_allow_error_cb_on_chord_header: a chord's errback also runs for the failed
    header task, not only for the body."""
    errors = tmp_path / "errors"
    peer.app.conf.task_allow_error_cb_on_chord_header = True
    try:
        header = [sig(peer, "add", 1, 1), sig(peer, "fail", message="hdr")]
        result = chord(header, sig(peer, "collect")).on_error(
            sig(peer, "log_error", path=str(errors))).apply_async()
        with pytest.raises(ValueError):
            result.get(timeout=30)
    finally:
        peer.app.conf.task_allow_error_cb_on_chord_header = False
    failed_id = result.parent.results[1].id
    deadline = time.monotonic() + 10
    while len(lines(errors)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a third run would have shown by now
    assert sorted(lines(errors)) == sorted([failed_id, result.id]), peer.name


def test_eager_results_are_stored_when_asked(peer: Peer, url: str) -> None:
    """task_store_eager_result: an eager task's state is stored and read elsewhere."""
    eager = make_app(url, peer.app.conf.result_backend, "unused")
    eager.conf.update(task_always_eager=True, task_store_eager_result=True)
    reader = make_app(url, peer.app.conf.result_backend, "unused")
    try:
        result = eager.tasks["parity.add"].delay(20, 22)
        assert result.get() == 42
        stored = AsyncResult(result.id, app=reader)
        assert (stored.state, stored.result) == ("SUCCESS", 42)
    finally:
        for app in (eager, reader):
            close = getattr(app.backend, "close", None)
            if close is not None:
                close()
