"""Faults: the broker down during a store, connections severed mid-wait and mid-store,
a result queue deleted while it is waited on.

Everything runs against one private RabbitMQ node for this module
(tests/private_node.py), stopped and started by its pid; the shared node on
127.0.0.1:5672 is never touched.  Connections are severed by a TCP proxy on
127.0.0.1 (tests/tcp_proxy.py) that resets both sides of every connection it carries
and keeps accepting new ones.  Measured figures are printed at the end of the module
(run with ``-s`` to see them).

Two tests pin bugs that kombu's ``Connection.ensure`` had in ``Store.run``: the retry
policy was ignored while there was no connection yet, and a connection lost again
while reconnecting ended the retries.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from typing import Any, Callable, Dict, Iterator, List, Tuple

import amqp
import pytest
from celery import Celery, states

from celery_amqp_results import AMQPBackend, ResultBrokerError
from tests.private_node import HOST, PrivateNode, free_port
from tests.tcp_proxy import TcpProxy

#: A user of the private node with a password that must never appear in a message.
USER, SECRET = "faults", "Fau1ts-S3cret-pw"

#: A kombu retry policy that gives up quickly (3 tries, at most 0.2 s apart).
SMALL_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.1,
                "interval_max": 0.2}

#: What each test measured, printed when the module ends.
MEASURED: Dict[str, float] = {}

MakeApp = Callable[..., Celery]


def new_id() -> str:
    return str(uuid.uuid4())


def node_url(node: PrivateNode) -> str:
    return f"amqp://{USER}:{SECRET}@{HOST}:{node.port}//"


@pytest.fixture(scope="module")
def node() -> Iterator[PrivateNode]:
    """One private RabbitMQ node for this module, removed (data and all) at the end."""
    private = PrivateNode()
    try:
        private.start()
        private.ctl("add_user", USER, SECRET)
        private.ctl("set_permissions", "-p", "/", USER, ".*", ".*", ".*")
        yield private
    finally:
        private.destroy()
        for name, value in MEASURED.items():
            print(f"[test_faults] {name}: {value:.3f}")


@pytest.fixture
def running(node: PrivateNode) -> PrivateNode:
    """The private node, running (a test that failed half-way may have left it down)."""
    node.start()
    return node


@pytest.fixture
def apps() -> Iterator[MakeApp]:
    """Makes Celery apps; the backend of each is closed when the test ends.

    ``app.backend`` is per thread in Celery, so tests hand the backend object made
    here to their threads instead of letting a thread make one of its own.
    """
    backends: List[AMQPBackend] = []

    def make(url: str, **conf: Any) -> Celery:
        app = Celery("faults", broker=url, backend=url, set_as_current=False)
        app.conf.update(broker_connection_retry_on_startup=True, **conf)
        backend = app.backend
        assert isinstance(backend, AMQPBackend)
        backends.append(backend)
        return app

    yield make
    for backend in backends:
        backend.close()


@pytest.fixture
def proxy(running: PrivateNode) -> Iterator[TcpProxy]:
    """A TCP proxy on 127.0.0.1 in front of the private node's AMQP port."""
    with TcpProxy(running.port) as tcp:
        yield tcp


def in_thread(name: str, fn: Callable[[], Any]) -> Tuple[threading.Thread, Dict[str, Any]]:
    """Run ``fn`` in a daemon thread; the outcome dict gets value or error and times."""
    outcome: Dict[str, Any] = {}

    def run() -> None:
        outcome["began"] = time.monotonic()
        try:
            outcome["value"] = fn()
        except BaseException as exc:
            outcome["error"] = exc
            outcome["traceback"] = traceback.format_exc()
        finally:
            outcome["ended"] = time.monotonic()
            outcome["elapsed"] = outcome["ended"] - outcome["began"]

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread, outcome


def get_in_thread(app: Celery, task_id: str,
                  timeout: float) -> Tuple[threading.Thread, Dict[str, Any]]:
    """``AsyncResult(task_id).get(timeout)`` in a thread, on ``app``'s main backend."""
    backend = app.backend

    def wait() -> Any:
        try:
            return app.AsyncResult(task_id, backend=backend).get(timeout=timeout)
        finally:
            backend.close()  # this thread's waiter connection

    return in_thread(f"get-{task_id}", wait)


def raised(outcome: Dict[str, Any]) -> None:
    """Re-raise what the thread raised, with the thread's traceback."""
    if "error" in outcome:
        raise AssertionError(f"the thread raised:\n{outcome['traceback']}") from \
            outcome["error"]


def every_message(exc: BaseException) -> str:
    """str and repr of ``exc`` and of every exception it was raised from."""
    parts: List[str] = []
    seen: Any = exc
    while seen is not None and len(parts) < 40:
        parts += [str(seen), repr(seen)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


# -- the broker is down during a store ---------------------------------------------------------

def _store_fails(backend: AMQPBackend) -> Tuple[ResultBrokerError, float]:
    began = time.monotonic()
    with pytest.raises(ResultBrokerError) as info:
        backend.mark_as_done(new_id(), {"never": "stored"})
    return info.value, time.monotonic() - began


def test_store_while_broker_down_raises_clearly(running: PrivateNode, apps: MakeApp,
                                                caplog: pytest.LogCaptureFixture) -> None:
    node = running
    url = node_url(node)
    # One backend holds a pooled connection the stop leaves dead; one has none yet.
    warm = apps(url).backend
    warm.mark_as_done(new_id(), "warm-up")
    fresh = apps(url).backend
    for backend in (warm, fresh):
        backend.retry_policy.update(SMALL_POLICY)

    caplog.set_level(logging.DEBUG)
    node.stop()
    errors = {}
    for label, backend in (("pooled connection lost", warm), ("no connection yet", fresh)):
        error, took = _store_fails(backend)
        errors[label] = error
        MEASURED[f"store, broker down, {label}: raised after (s)"] = took
        # Bounded by the retry policy, not by kombu's own connect retries.
        assert took < 15.0, f"{label}: the failing store took {took:.1f} s"
    # The lost pooled connection is retried by SMALL_POLICY: 3 tries, 0.3 s of sleep.
    assert MEASURED["store, broker down, pooled connection lost: raised after (s)"] < 3.0

    for label, error in errors.items():
        message = str(error)
        assert error.retryable is True, (label, message)
        assert fresh.exception_safe_to_retry(error) is True
        assert f"{HOST}:{node.port}" in message, (label, message)
        assert "vhost" in message and USER in message, (label, message)
        assert SECRET not in every_message(error), (label, every_message(error))
    logged = "\n".join(f"{r.getMessage()} {r.exc_info or ''}" for r in caplog.records)
    assert SECRET not in logged


def test_store_to_unreachable_broker_honours_retry_policy(apps: MakeApp) -> None:
    """3 refused connects at most 0.2 s apart must not take 6 s.  Nothing listens on
    the port, like a stopped node, and no connection was made before the store."""
    backend = apps(f"amqp://{USER}:{SECRET}@{HOST}:{free_port()}//").backend
    backend.retry_policy.update(SMALL_POLICY)
    error, took = _store_fails(backend)
    MEASURED["store, nothing listening, max_retries=2, intervals <= 0.2 s (s)"] = took
    assert error.retryable is True
    assert took < 2.0, f"a store with max_retries=2, intervals <= 0.2 s took {took:.2f} s"


def test_always_retry_stores_once_broker_is_back(running: PrivateNode, apps: MakeApp) -> None:
    node = running
    url = node_url(node)
    app = apps(url, result_backend_always_retry=True, result_backend_max_retries=50,
               result_backend_base_sleep_between_retries_ms=100,
               result_backend_max_sleep_between_retries_ms=500)
    backend = app.backend
    backend.retry_policy.update(SMALL_POLICY)
    task_id, value = new_id(), {"stored": "after the broker came back", "n": 7}
    # Celery's retry wrapper sleeps through backend._sleep between tries (5.3 to 5.7;
    # only 5.7 also logs "Retrying"): count those sleeps to see the wrapper at work.
    retries: List[float] = []
    real_sleep = backend._sleep
    backend._sleep = lambda amount: (retries.append(amount), real_sleep(amount))[1]

    node.stop()
    try:
        thread, outcome = in_thread("store", lambda: backend.mark_as_done(task_id, value))
        time.sleep(2.0)
        assert thread.is_alive(), outcome.get("traceback")
    finally:
        node.start()
    back = time.monotonic()
    thread.join(timeout=60)
    assert not thread.is_alive(), "the store was still retrying 60 s after the broker came back"
    raised(outcome)

    MEASURED["always-retry store: total (s)"] = outcome["elapsed"]
    MEASURED["always-retry store: broker start (s)"] = node.last_start_seconds or 0.0
    MEASURED["always-retry store: done after the broker was back (s)"] = outcome["ended"] - back
    MEASURED["always-retry store: celery retries"] = len(retries)
    assert retries, "the store never went through Celery's retry wrapper"

    reader = apps(url)
    meta = reader.backend.get_task_meta(task_id, cache=False)
    assert meta["status"] == states.SUCCESS, meta
    assert meta["result"] == value


# -- connections severed ----------------------------------------------------------------------

def test_connection_severed_mid_wait(running: PrivateNode, proxy: TcpProxy, apps: MakeApp,
                                     caplog: pytest.LogCaptureFixture) -> None:
    node = running
    task_id, value = new_id(), {"answer": 42}
    deadline = 20.0
    caplog.set_level(logging.WARNING, logger="celery_amqp_results.waiter")
    waiting = apps(proxy.url_for(USER, SECRET))
    writer = apps(node_url(node))

    thread, outcome = get_in_thread(waiting, task_id, deadline)
    time.sleep(1.0)
    assert thread.is_alive(), outcome.get("traceback")
    assert proxy.cut() == 1  # the waiter's connection, its only one
    writer.backend.mark_as_done(task_id, value)
    stored = time.monotonic()
    thread.join(timeout=deadline + 10)
    assert not thread.is_alive(), "get() still waiting past its deadline"
    raised(outcome)

    MEASURED["severed wait: get() returned after the store (s)"] = outcome["ended"] - stored
    MEASURED["severed wait: get() total (s)"] = outcome["elapsed"]
    assert outcome["value"] == value
    assert outcome["ended"] - stored < 5.0
    assert outcome["elapsed"] < deadline - 10
    assert proxy.accepted >= 2, "the waiter never reconnected through the proxy"
    assert any("lost its connection" in r.getMessage() for r in caplog.records), \
        "the waiter never noticed its connection being cut"


def test_connection_severed_mid_store_loses_nothing_silently(
        running: PrivateNode, proxy: TcpProxy, apps: MakeApp) -> None:
    node = running
    total, cut_at = 300, (60, 140, 220)
    backend = apps(proxy.url_for(USER, SECRET)).backend
    succeeded: Dict[str, Any] = {}
    failed: Dict[str, Tuple[Any, BaseException]] = {}
    done = [0]

    def store_all() -> None:
        for index in range(total):
            task_id = new_id()
            value = {"index": index, "text": f"value-{index}", "items": [index, -index]}
            try:
                backend.mark_as_done(task_id, value)
            except Exception as exc:
                failed[task_id] = (value, exc)
            else:
                succeeded[task_id] = value
            done[0] += 1

    thread, outcome = in_thread("stores", store_all)
    cuts = []
    for threshold in cut_at:
        limit = time.monotonic() + 30
        while done[0] < threshold and thread.is_alive() and time.monotonic() < limit:
            time.sleep(0.001)
        assert thread.is_alive(), f"the stores ended before {threshold} were done"
        cuts.append(proxy.cut())
    thread.join(timeout=60)
    assert not thread.is_alive(), "the store loop still runs 60 s after the last cut"
    raised(outcome)
    assert len(succeeded) + len(failed) == total
    assert all(cut >= 1 for cut in cuts), cuts

    reader = apps(node_url(node)).backend
    lost = {}
    for task_id, value in succeeded.items():
        meta = reader.get_task_meta(task_id, cache=False)
        if meta["status"] != states.SUCCESS or meta["result"] != value:
            lost[task_id] = (value, meta)
    # A store that raised may or may not have reached the broker; it must not have
    # stored anything but its own value.
    stored_anyway = 0
    for task_id, (value, exc) in failed.items():
        meta = reader.get_task_meta(task_id, cache=False)
        assert meta["status"] in (states.PENDING, states.SUCCESS), (task_id, meta, exc)
        if meta["status"] == states.SUCCESS:
            assert meta["result"] == value
            stored_anyway += 1

    MEASURED["severed stores: returned"] = len(succeeded)
    MEASURED["severed stores: raised"] = len(failed)
    MEASURED["severed stores: raised but stored anyway"] = stored_anyway
    MEASURED["severed stores: lost after returning"] = len(lost)
    MEASURED["severed stores: connections cut"] = sum(cuts)
    MEASURED["severed stores: loop took (s)"] = outcome["elapsed"]
    assert not lost, f"{len(lost)} stores returned but are not readable: {lost}"
    assert all(isinstance(exc, ResultBrokerError) for _, exc in failed.values()), \
        {task_id: repr(exc) for task_id, (_, exc) in failed.items()}
    assert len(succeeded) >= total - 10, \
        f"only {len(succeeded)} of {total} stores survived {len(cuts)} cuts"


def test_connection_lost_again_while_reconnecting_is_retried(
        running: PrivateNode, proxy: TcpProxy, apps: MakeApp) -> None:
    """A second loss right after reconnecting: still within max_retries=5, so stored."""
    node = running
    backend = apps(proxy.url_for(USER, SECRET)).backend
    backend.retry_policy.update(max_retries=5, interval_start=0, interval_step=0.1,
                                interval_max=0.2)
    backend.mark_as_done(new_id(), "warm-up")  # a pooled connection through the proxy
    proxy.sever_channel_opens(1)  # the reconnection is lost when it opens its channel
    assert proxy.cut() == 1
    task_id, value = new_id(), {"after": "two losses"}
    began = time.monotonic()
    try:
        backend.mark_as_done(task_id, value)
    finally:
        MEASURED["lost again while reconnecting: store took (s)"] = time.monotonic() - began
    assert proxy.channel_opens_to_sever == 0, "the reconnection was never severed"
    meta = apps(node_url(node)).backend.get_task_meta(task_id, cache=False)
    assert meta["status"] == states.SUCCESS and meta["result"] == value, meta


# -- the result queue is deleted while waited on ------------------------------------------------

@pytest.mark.parametrize("writer_kind", ["same writer", "new writer"])
def test_queue_deleted_while_waited_on(running: PrivateNode, apps: MakeApp,
                                       writer_kind: str) -> None:
    """The PROGRESS queue vanishes; the SUCCESS stored afterwards still wakes the waiter.

    ``same writer`` stored the PROGRESS state and believes the queue exists (its
    publish comes back unroutable and it declares again); ``new writer`` declares it.
    """
    node = running
    url = node_url(node)
    task_id, value = new_id(), {"finished": True}
    first = apps(url)
    first.backend.store_result(task_id, {"done": 1, "total": 2}, "PROGRESS")
    queue_name = first.backend.names.task_queue(task_id)

    waiting = apps(url)
    thread, outcome = get_in_thread(waiting, task_id, 15.0)
    time.sleep(1.0)
    assert thread.is_alive(), outcome.get("traceback")

    raw = amqp.Connection(f"{HOST}:{node.port}", userid=USER, password=SECRET,
                          virtual_host="/")
    raw.connect()
    try:
        channel = raw.channel()
        assert channel.queue_delete(queue=queue_name) == 1  # the PROGRESS state with it
        with pytest.raises(amqp.exceptions.NotFound):
            raw.channel().queue_declare(queue=queue_name, passive=True)
    finally:
        raw.close()
    assert thread.is_alive(), outcome.get("traceback")

    writer = first if writer_kind == "same writer" else apps(url)
    writer.backend.mark_as_done(task_id, value)
    stored = time.monotonic()
    thread.join(timeout=20)
    assert not thread.is_alive(), "get() still waiting past its deadline"
    raised(outcome)
    MEASURED[f"deleted queue, {writer_kind}: get() returned after the store (s)"] = \
        outcome["ended"] - stored
    assert outcome["value"] == value
    assert outcome["ended"] - stored < 5.0

    meta = apps(url).backend.get_task_meta(task_id, cache=False)
    assert meta["status"] == states.SUCCESS and meta["result"] == value, meta
