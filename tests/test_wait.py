"""Waiting: pushed wake-ups, one deadline, every state in order, nothing left behind."""
from __future__ import annotations

import threading
import time
import uuid
from typing import Any, Callable, Dict, List

import pytest
from celery import states
from celery.exceptions import TimeoutError
from celery.result import GroupResult, ResultSet
from kombu import Connection, Consumer, Exchange, Producer, Queue

from celery_amqp_results import waiter as waiter_module
from tests import broker
from tests.conftest import make_app


def new_id() -> str:
    return str(uuid.uuid4())


def later(delay: float, fn: Callable[[], Any]) -> threading.Thread:
    """Run ``fn`` in a thread after ``delay`` seconds (the 'worker' side of a test)."""
    def run() -> None:
        time.sleep(delay)
        fn()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def writer(url):
    """A second app, as a worker would be: stores states on its own connections."""
    app = make_app(url)
    yield app.backend
    app.backend.close()


def waiter_consumers(vhost: str) -> List[Dict[str, Any]]:
    return [c for c in broker.consumers(vhost)
            if c["queue_name"].startswith("celery-results.waiter.")]


def waiter_bindings(vhost: str) -> List[Dict[str, Any]]:
    return [b for b in broker.bindings(vhost)
            if b["destination_name"].startswith("celery-results.waiter.")
            and b["source_name"]]


def test_waiter_is_woken_by_the_broker(app, writer) -> None:
    task_id = new_id()
    later(0.5, lambda: writer.mark_as_done(task_id, "pushed"))
    started = time.monotonic()
    assert app.AsyncResult(task_id).get(timeout=10, interval=30) == "pushed"
    # interval=30 would be the sleep of a polling loop; a push arrives at once.
    assert time.monotonic() - started < 5


def test_regression_get_timeout_is_a_deadline_while_states_keep_arriving(app, writer) -> None:
    task_id = new_id()
    stop = threading.Event()

    def chatter() -> None:
        step = 0
        while not stop.is_set():
            writer.store_result(task_id, {"step": step}, "PROGRESS")
            step += 1
            time.sleep(0.01)

    thread = threading.Thread(target=chatter, daemon=True)
    thread.start()
    seen: List[Dict[str, Any]] = []
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            app.AsyncResult(task_id).get(timeout=2, on_message=seen.append)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        thread.join()
    assert 2 <= elapsed < 3, elapsed
    assert len(seen) > 20, "progress states were not seen while waiting"


def test_timeout_zero_checks_once(app, writer) -> None:
    pending_id, done_id = new_id(), new_id()
    writer.mark_as_done(done_id, "ready")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        app.AsyncResult(pending_id).get(timeout=0)
    assert time.monotonic() - started < 1
    assert app.AsyncResult(done_id).get(timeout=0) == "ready"


def test_regression_on_message_sees_every_state_in_order(app, writer) -> None:
    task_id = new_id()

    def work() -> None:
        for step in range(50):
            writer.store_result(task_id, {"step": step}, "PROGRESS")
        writer.mark_as_done(task_id, "finished")

    later(0.5, work)
    seen: List[Dict[str, Any]] = []
    assert app.AsyncResult(task_id).get(timeout=20, on_message=seen.append) == "finished"
    assert [m["result"]["step"] for m in seen[:-1]] == list(range(50))
    assert seen[-1]["status"] == states.SUCCESS


def test_on_message_sees_the_final_state_of_a_finished_task(app, writer) -> None:
    task_id = new_id()
    writer.mark_as_done(task_id, 5)
    seen: List[Dict[str, Any]] = []
    assert app.AsyncResult(task_id).get(timeout=5, on_message=seen.append) == 5
    assert [m["status"] for m in seen] == [states.SUCCESS]


def test_regression_timed_out_get_then_get_still_receives(app, writer, vhost) -> None:
    """Celery 4.4 left a consumer behind after a timeout, which swallowed the result."""
    task_id = new_id()
    with pytest.raises(TimeoutError):
        app.AsyncResult(task_id).get(timeout=0.3)
    assert waiter_consumers(vhost) == [] and waiter_bindings(vhost) == []
    writer.mark_as_done(task_id, "not swallowed")
    assert app.AsyncResult(task_id).get(timeout=5) == "not swallowed"
    # ...and by any other client too.
    other = make_app(app.conf.broker_url)
    assert other.AsyncResult(task_id).get(timeout=5) == "not swallowed"
    other.backend.close()


@pytest.mark.parametrize("outcome", ["success", "timeout", "exception"])
def test_every_exit_path_cancels_the_consumer(app, writer, vhost, outcome) -> None:
    task_id = new_id()
    observed: List[int] = []

    def on_message(meta: Dict[str, Any]) -> None:
        observed.append(len(waiter_consumers(vhost)))
        if outcome == "exception":
            raise RuntimeError("callback failed")

    later(0.3, lambda: writer.store_result(task_id, {"n": 1}, "PROGRESS"))
    if outcome == "success":
        later(0.6, lambda: writer.mark_as_done(task_id, 1))
        app.AsyncResult(task_id).get(timeout=10, on_message=on_message)
    elif outcome == "timeout":
        with pytest.raises(TimeoutError):
            app.AsyncResult(task_id).get(timeout=1.0, on_message=on_message)
    else:
        with pytest.raises(RuntimeError, match="callback failed"):
            app.AsyncResult(task_id).get(timeout=10, on_message=on_message)
    assert observed and observed[0] == 1, "no consumer was open while waiting"
    assert waiter_consumers(vhost) == []
    assert waiter_bindings(vhost) == []


def test_get_many_yields_in_arrival_order(app, writer) -> None:
    ids = [new_id() for _ in range(5)]
    order = [ids[3], ids[0], ids[4], ids[1], ids[2]]

    def work() -> None:
        for task_id in order:
            writer.mark_as_done(task_id, task_id)
            time.sleep(0.05)

    later(0.3, work)
    got = [task_id for task_id, meta in app.backend.get_many(ids, timeout=10)]
    assert got == order


def test_join_has_one_deadline(app, writer) -> None:
    ids = [new_id() for _ in range(3)]
    later(0.4, lambda: writer.mark_as_done(ids[0], 0))
    later(0.8, lambda: writer.mark_as_done(ids[1], 1))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        ResultSet([app.AsyncResult(i) for i in ids]).join_native(timeout=1.2)
    assert 1.2 <= time.monotonic() - started < 2.0


def test_join_native_and_group_get(app, writer) -> None:
    ids = [new_id() for _ in range(10)]
    later(0.2, lambda: [writer.mark_as_done(i, n) for n, i in enumerate(reversed(ids))])
    group = GroupResult(new_id(), [app.AsyncResult(i) for i in ids], app=app)
    assert group.get(timeout=10) == list(reversed(range(10)))
    assert group.ready() and group.successful()


def test_join_propagates_failures(app, writer) -> None:
    ids = [new_id(), new_id()]
    writer.mark_as_done(ids[0], 1)
    writer.mark_as_failure(ids[1], ValueError("bad member"))
    with pytest.raises(ValueError, match="bad member"):
        ResultSet([app.AsyncResult(i) for i in ids]).join_native(timeout=5)


def test_consume_yields_each_state_until_ready(app, writer) -> None:
    task_id = new_id()

    def work() -> None:
        writer.store_result(task_id, None, states.STARTED)
        for step in range(3):
            writer.store_result(task_id, {"step": step}, "PROGRESS")
        writer.mark_as_done(task_id, "end")

    later(0.4, work)
    seen = [meta["status"] for meta in app.backend.consume(task_id, timeout=10)]
    assert seen == [states.STARTED, "PROGRESS", "PROGRESS", "PROGRESS", states.SUCCESS]


def test_wait_for_returns_meta_and_propagates(app, writer) -> None:
    good, bad = new_id(), new_id()
    writer.mark_as_done(good, "fine")
    writer.mark_as_failure(bad, KeyError("nope"))
    assert app.backend.wait_for(good, timeout=5)["result"] == "fine"
    with pytest.raises(KeyError):
        app.backend.wait_for(bad, timeout=5)
    assert app.backend.wait_for(bad, timeout=5, propagate=False)["status"] == states.FAILURE
    with pytest.raises(TimeoutError):
        app.backend.wait_for(new_id(), timeout=0.2)


def test_drain_events_on_a_given_consumer(url, backend) -> None:
    exchange = Exchange("car-drain-test", "direct", durable=False, auto_delete=True)
    queue = Queue(f"car-drain-{new_id()}", exchange, "rk", exclusive=True)
    with Connection(url) as conn:
        consumer = Consumer(conn.channel(), [queue], accept=["json"], no_ack=True)
        consumer.consume()
        with pytest.raises(TimeoutError):
            backend.drain_events(conn, consumer, timeout=0.3)
        Producer(conn.channel()).publish(
            {"task_id": "t1", "status": states.SUCCESS, "result": 3},
            exchange=exchange, routing_key="rk", declare=[exchange])
        results = backend.drain_events(conn, consumer, timeout=5)
        assert results["t1"]["result"] == 3
        consumer.cancel()


def test_threads_share_one_backend(url) -> None:
    """result_backend_thread_safe=True: one backend object, a waiter per thread."""
    app = make_app(url, result_backend_thread_safe=True)
    writer = make_app(url)
    ids = [new_id() for _ in range(8)]
    got: Dict[str, Any] = {}
    errors: List[BaseException] = []

    def wait(task_id: str) -> None:
        try:
            got[task_id] = app.AsyncResult(task_id).get(timeout=20)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=wait, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    for task_id in ids:
        writer.backend.mark_as_done(task_id, task_id[::-1])
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert got == {i: i[::-1] for i in ids}
    app.backend.close()
    writer.backend.close()


def test_nested_wait_inside_a_join_keeps_the_outer_wait(app, writer) -> None:
    """Celery's join_native calls child.get() while iterating iter_native (groups of
    groups); user code may do the same inside get_many.  The inner wait must not
    take the outer wait's bindings away."""
    outer = [new_id() for _ in range(3)]
    inner = new_id()
    writer.mark_as_done(outer[0], "first")
    later(0.5, lambda: writer.mark_as_done(inner, "inner"))
    later(1.0, lambda: [writer.mark_as_done(i, i) for i in outer[1:]])
    got = []
    started = time.monotonic()
    for task_id, _meta in app.backend.get_many(outer, timeout=10):
        got.append(task_id)
        if len(got) == 1:
            assert app.AsyncResult(inner).get(timeout=5) == "inner"
    assert sorted(got) == sorted(outer)
    assert time.monotonic() - started < 5


def test_group_of_groups_joins(app, writer) -> None:
    a, b = [new_id(), new_id()], [new_id(), new_id()]
    inner_a = GroupResult(new_id(), [app.AsyncResult(i) for i in a], app=app)
    inner_b = GroupResult(new_id(), [app.AsyncResult(i) for i in b], app=app)
    outer = GroupResult(new_id(), [inner_a, inner_b], app=app)
    later(0.3, lambda: [writer.mark_as_done(i, n) for n, i in enumerate(a + b)])
    assert outer.join_native(timeout=10) == [[0, 1], [2, 3]]


def test_waiter_keeps_its_connection_and_queue_between_waits(app, writer, vhost) -> None:
    """Cleaning up after a wait must not cost a reconnect on the next one (an
    auto-delete waiter queue vanished with its consumer and forced exactly that)."""
    first, second = new_id(), new_id()
    writer.mark_as_done(first, 1)
    writer.mark_as_done(second, 2)
    assert app.AsyncResult(first).get(timeout=5) == 1
    waiter = app.backend._waiter()
    connection = waiter._conn
    assert connection is not None
    assert waiter.queue_name in {q["name"] for q in broker.queues(vhost)}
    assert waiter_consumers(vhost) == [] and waiter_bindings(vhost) == []
    assert app.AsyncResult(second).get(timeout=5) == 2
    assert app.backend._waiter()._conn is connection


def test_a_task_sent_just_now_that_finished_at_once_is_still_found(app, writer) -> None:
    """A wait right after sending skips its first peek; the peek after binding finds it."""
    task_id = new_id()
    app.backend.on_task_call(None, task_id)  # what Celery calls as it sends the task
    writer.mark_as_done(task_id, "already stored")
    assert app.AsyncResult(task_id).get(timeout=5) == "already stored"
    assert task_id not in app.backend._sent  # the skip was taken, once


def test_late_deliveries_to_a_cancelled_consumer_are_dropped(app) -> None:
    """The end of a wait cancels its consumer without waiting; what was already on the
    way to it must not answer a later wait for the same task as if it were new."""
    from amqp import Message

    from celery_amqp_results.waiter import _Session

    waiter = app.backend._waiter()
    task_id = new_id()
    session = _Session({task_id}, None)
    waiter._sessions.append(session)
    try:
        waiter._consumer_tag = "amq.ctag-current"
        stale = Message(b"{}", correlation_id=task_id)
        stale.delivery_info = {"consumer_tag": "amq.ctag-cancelled", "routing_key": task_id}
        waiter._on_message(stale)
        assert list(session.inbox) == []
        fresh = Message(b"{}", correlation_id=task_id)
        fresh.delivery_info = {"consumer_tag": "amq.ctag-current", "routing_key": task_id}
        waiter._on_message(fresh)
        assert [entry[0] for entry in session.inbox] == [task_id]
    finally:
        waiter._sessions.remove(session)
        waiter._consumer_tag = None


# -- design (e): direct announcements to the sending thread's waiter queue --------------------


def sent_by_this_thread(app, task_id: str, **options: Any) -> None:
    """Publish the task message as apply_async does, to a queue no worker of the suite
    consumes (the test plays the worker)."""
    app.send_task("tests.direct", task_id=task_id, queue="car-tests.no-worker", **options)


def as_worker(app):
    """The request a worker stores with: the task message's reply_to (app.thread_oid,
    which is per thread: call this in the thread that sent the task)."""
    from celery.app.task import Context

    return Context(reply_to=app.thread_oid)


def connect_waiter(app) -> None:
    """A first wait connects this thread's waiter (pre-arming needs its queue to exist).

    An app of an earlier test can have had this app's address, hence its thread oid,
    and so its waiter's queue name; RabbitMQ deletes an exclusive queue shortly after
    its connection closed, and until then the name is taken (the waiter then binds, as
    it should).  These tests are about the reply name: wait until it is free.
    """
    for _ in range(100):
        with pytest.raises(TimeoutError):
            app.AsyncResult(new_id()).get(timeout=0.1)
        waiter = app.backend._waiter()
        if waiter.direct:
            return
        waiter.close()
        time.sleep(0.1)
    raise AssertionError("the waiter never got its reply name")


def test_a_wait_for_a_task_this_thread_sent_binds_nothing(app, writer, vhost,
                                                          monkeypatch) -> None:
    # A grace longer than any delay of the looking thread on a busy machine: past the
    # grace the wait binds by design (the next tests), which is not what this one checks.
    # (The waits' timeout is longer still: a wait shorter than the grace binds.)
    monkeypatch.setattr(waiter_module, "DIRECT_GRACE", 20.0)
    connect_waiter(app)
    waiter = app.backend._waiter()
    seen: Dict[str, List[Any]] = {}
    request = as_worker(app)  # here: thread_oid is this thread's
    for kind in ("sent here", "sent elsewhere"):
        task_id = new_id()
        if kind == "sent here":
            sent_by_this_thread(app, task_id)

        def look_then_store(kind: str = kind, task_id: str = task_id) -> None:
            # While the wait below waits (it cannot end before this store), well
            # inside its grace: the ids its waiter has bound.  (Not the broker's
            # listing: rabbitmqctl can take longer than the grace on RabbitMQ 4.0.)
            seen[kind] = list(waiter._bound)
            writer.mark_as_done(task_id, "pushed", request=request)
        later(0.3, look_then_store)
        assert app.AsyncResult(task_id).get(timeout=60) == "pushed"
        seen[kind + " id"] = [task_id]
    assert seen["sent here"] == []
    # The control: a task this thread did not send is waited for by binding.
    assert seen["sent elsewhere"] == seen["sent elsewhere id"]
    assert waiter_bindings(vhost) == []  # and nothing is left bound


def test_a_task_this_thread_sent_that_finished_before_the_wait_is_found(app, writer) -> None:
    connect_waiter(app)
    task_id = new_id()
    sent_by_this_thread(app, task_id)
    writer.store_result(task_id, {"step": 1}, "PROGRESS", request=as_worker(app))
    writer.mark_as_done(task_id, "done early", request=as_worker(app))
    assert app.AsyncResult(task_id).get(timeout=5) == "done early"
    # Its announcements were taken off the queue by that wait: a wait again (no cache)
    # must still end, by peeking.
    states_seen = [meta["status"] for meta in app.backend.consume(task_id, timeout=5)]
    assert states_seen == [states.SUCCESS]


def test_a_pre_armed_task_finishing_during_another_wait_is_found_later(app, writer) -> None:
    connect_waiter(app)
    first, second = new_id(), new_id()
    sent_by_this_thread(app, first)
    sent_by_this_thread(app, second)
    request = as_worker(app)  # here: thread_oid is this thread's
    later(0.2, lambda: writer.mark_as_done(second, "second", request=request))
    later(0.5, lambda: writer.mark_as_done(first, "first", request=request))
    assert app.AsyncResult(first).get(timeout=10) == "first"
    # second's announcement reached the first wait, which did not want it.
    assert app.AsyncResult(second).get(timeout=5) == "second"


def test_a_task_sent_with_another_reply_to_is_waited_for_by_binding(app, writer, vhost) -> None:
    connect_waiter(app)
    task_id = new_id()
    sent_by_this_thread(app, task_id, reply_to="somewhere-else")
    seen: List[Any] = []

    def look_then_store() -> None:
        seen.append(waiter_bindings(vhost))
        writer.mark_as_done(task_id, "bound")
    later(0.3, look_then_store)
    assert app.AsyncResult(task_id).get(timeout=10) == "bound"
    assert seen and seen[0] != []


def test_a_reply_name_held_elsewhere_falls_back_to_binding(url, writer, vhost) -> None:
    import amqp

    app = make_app(url)
    holder = amqp.Connection(host=f"{broker.HOST}:{broker.PORT}", userid="guest",
                             password="guest", virtual_host=vhost)
    holder.connect()
    try:
        name = app.backend.names.reply_queue(app.thread_oid)
        holder.channel().queue_declare(name, exclusive=True, auto_delete=False)
        with pytest.raises(TimeoutError):
            app.AsyncResult(new_id()).get(timeout=0.1)  # connects the waiter
        assert app.backend._waiter().direct is False
        task_id = new_id()
        sent_by_this_thread(app, task_id)
        writer.mark_as_done(task_id, "found by a peek", request=as_worker(app))
        assert app.AsyncResult(task_id).get(timeout=5) == "found by a peek"
    finally:
        holder.close()
        app.backend.close()


def test_reply_queue_only_for_a_uuid_reply_to(app) -> None:
    names = app.backend.names
    assert names.reply_queue("celery") is None
    assert names.reply_queue(None) is None
    assert names.reply_queue("0d9c5f04-6f5e-3f3a-9a8e-1c2d3e4f5a6b") == (
        names.waiter_prefix + "reply-0d9c5f04-6f5e-3f3a-9a8e-1c2d3e4f5a6b")


def test_a_pre_armed_task_whose_worker_announces_nothing_directly_still_ends(app, writer) -> None:
    """A worker of an older release publishes no direct announcement: after the grace
    the wait binds and peeks, and ends (it must never hang on a pre-armed task)."""
    connect_waiter(app)
    task_id = new_id()
    sent_by_this_thread(app, task_id)
    later(0.2, lambda: writer.mark_as_done(task_id, "the old way"))  # no reply_to
    assert app.AsyncResult(task_id).get(timeout=20) == "the old way"


def test_timeout_zero_finds_a_pre_armed_task_already_stored(app, writer) -> None:
    connect_waiter(app)
    task_id = new_id()
    sent_by_this_thread(app, task_id)
    writer.mark_as_done(task_id, "stored", request=as_worker(app))
    assert app.AsyncResult(task_id).get(timeout=0) == "stored"
