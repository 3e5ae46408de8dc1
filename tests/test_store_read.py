"""Store and read against the real RabbitMQ: confirmed stores, reads that never remove."""
from __future__ import annotations

import logging
import subprocess
import sys
import time
import uuid

import pytest
from celery import states

from tests import broker
from tests.broker import RawBroker
from tests.conftest import ROOT, make_app


def new_id() -> str:
    return str(uuid.uuid4())


def qname(task_id: str) -> str:
    return f"celery-results.task.{task_id}"


def test_store_returns_only_once_the_broker_has_the_state(backend, vhost) -> None:
    task_id = new_id()
    backend.store_result(task_id, {"answer": 42}, states.SUCCESS)
    with RawBroker(vhost) as raw:
        message = raw.peek(qname(task_id))
    assert message is not None, "store_result returned before the broker held the state"
    assert message.properties["delivery_mode"] == 2
    assert message.properties["correlation_id"] == task_id
    # Expiry is the readers' to check (read.py): no broker TTL, an expires-at header.
    assert "expiration" not in message.properties
    expires_at = message.properties["application_headers"]["expires-at"]
    assert abs(expires_at - (time.time() + 24 * 3600) * 1000) < 600_000
    assert '"answer": 42' in message.body


def test_unknown_id_is_pending_and_creates_nothing(backend, vhost) -> None:
    task_id = new_id()
    assert backend.get_task_meta(task_id) == {"status": states.PENDING, "result": None}
    assert backend.get_state(task_id) == states.PENDING
    with RawBroker(vhost) as raw:
        assert not raw.exists(qname(task_id))


def test_reading_never_removes(app, backend, vhost) -> None:
    task_id = new_id()
    backend.mark_as_done(task_id, "kept")
    for _ in range(5):
        assert backend.get_task_meta(task_id, cache=False)["result"] == "kept"
        assert app.AsyncResult(task_id).get(timeout=5) == "kept"
    with RawBroker(vhost) as raw:
        assert raw.message_count(qname(task_id)) == 1


def test_latest_state_wins_and_only_it_is_kept(backend, vhost) -> None:
    task_id = new_id()
    backend.store_result(task_id, None, states.STARTED)
    assert backend.get_state(task_id) == states.STARTED
    for step in range(3):
        backend.store_result(task_id, {"step": step}, "PROGRESS")
        meta = backend.get_task_meta(task_id)
        assert (meta["status"], meta["result"]) == ("PROGRESS", {"step": step})
    backend.mark_as_done(task_id, 7)
    assert backend.get_task_meta(task_id)["result"] == 7
    with RawBroker(vhost) as raw:
        assert raw.message_count(qname(task_id)) == 1


def test_regression_2000_unread_progress_states_then_a_read(backend) -> None:
    """Celery 3.1/4.4 raised BacklogLimitExceeded past 1000 unread states."""
    task_id = new_id()
    for step in range(2000):
        backend.store_result(task_id, {"step": step}, "PROGRESS")
    meta = backend.get_task_meta(task_id)
    assert (meta["status"], meta["result"]) == ("PROGRESS", {"step": 1999})
    backend.mark_as_done(task_id, "done")
    assert backend.get_task_meta(task_id)["result"] == "done"


def test_regression_second_reader_after_get(app, url) -> None:
    task_id = new_id()
    app.backend.mark_as_done(task_id, [1, 2, 3])
    assert app.AsyncResult(task_id).get(timeout=5) == [1, 2, 3]
    other = make_app(url)
    try:
        assert other.AsyncResult(task_id).get(timeout=5) == [1, 2, 3]
        assert other.AsyncResult(task_id).state == states.SUCCESS
    finally:
        other.backend.close()


READER = """
import sys
from celery import Celery
app = Celery("reader", broker=sys.argv[1], backend=sys.argv[1])
r = app.AsyncResult(sys.argv[2])
print(r.state, r.get(timeout=10))
"""


def test_regression_restarted_client_reads_again(app, url) -> None:
    task_id = new_id()
    app.backend.mark_as_done(task_id, "persisted")
    for _ in range(2):  # two fresh processes, one after the other
        out = subprocess.run([sys.executable, "-c", READER, url, task_id], check=True,
                             capture_output=True, text=True, timeout=60).stdout
        assert out.strip() == "SUCCESS persisted"


def test_regression_celery_result_command_twice(app, url) -> None:
    task_id = new_id()
    app.backend.mark_as_done(task_id, {"v": 1})
    env = {"CAR_TEST_URL": url, "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tests.tasks_app", "result", task_id],
            capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        assert "'v': 1" in proc.stdout


def test_regression_forget_really_deletes(app, url, vhost) -> None:
    task_id = new_id()
    app.backend.mark_as_done(task_id, 1)
    other = make_app(url)
    try:
        assert other.AsyncResult(task_id).state == states.SUCCESS
        app.AsyncResult(task_id).forget()
        with RawBroker(vhost) as raw:
            assert not raw.exists(qname(task_id))
        fresh = make_app(url)
        assert fresh.AsyncResult(task_id).state == states.PENDING
        fresh.backend.close()
        # Storing again after a forget works (the queue is declared anew).
        other.backend.mark_as_done(task_id, 2)
        assert app.backend.get_task_meta(task_id, cache=False)["result"] == 2
    finally:
        other.backend.close()


def test_regression_exists(app) -> None:
    task_id = new_id()
    result = app.AsyncResult(task_id)
    # AsyncResult.exists() is Celery 5.7's; the backend call under it works on 5.3 too.
    exists = result.exists if hasattr(result, "exists") else (
        lambda: app.backend.task_result_exists(task_id))
    assert exists() is False
    app.backend.store_result(task_id, None, states.STARTED)
    assert exists() is True
    result.forget()
    assert app.backend.task_result_exists(task_id) is False


def test_metadata_fields(backend) -> None:
    task_id = new_id()
    backend.store_result(task_id, None, states.STARTED)
    assert backend.get_task_meta(task_id).get("date_done") is None
    backend.mark_as_done(task_id, 1)
    meta = backend.get_task_meta(task_id)
    assert meta["date_done"] and meta["task_id"] == task_id
    assert meta["children"] is None and meta["traceback"] is None


def test_failure_is_stored_with_exception_and_traceback(app, backend) -> None:
    task_id = new_id()
    try:
        raise KeyError("missing")
    except KeyError as exc:
        backend.mark_as_failure(task_id, exc, traceback="Traceback: here")
    result = app.AsyncResult(task_id)
    assert result.state == states.FAILURE
    assert isinstance(result.result, KeyError)
    assert result.traceback == "Traceback: here"
    with pytest.raises(KeyError):
        result.get(timeout=5)


def test_result_expires_becomes_queue_ttl_and_state_deadline(url, vhost) -> None:
    """result_expires (s) is the queue's x-expires (ms) and each state's expires-at header.

    A long expiry: the queue is listed long before it can expire (with 1 s, a busy
    machine's rabbitmqctl was slower than the expiry and found no queue)."""
    app = make_app(url, result_expires=60)
    try:
        task_id = new_id()
        before = int(time.time() * 1000)
        app.backend.mark_as_done(task_id, "kept a minute")
        after = int(time.time() * 1000)
        queue = broker.queue(vhost, qname(task_id))
        assert queue["arguments"]["x-expires"] == 60_000
        with RawBroker(vhost) as raw:
            headers = raw.peek(qname(task_id)).properties["application_headers"]
        assert before + 60_000 <= headers["expires-at"] <= after + 60_000
        assert app.backend.get_task_meta(task_id, cache=False)["status"] == states.SUCCESS
    finally:
        app.backend.close()


def test_result_expires(url, vhost) -> None:
    """A state is PENDING once result_expires has passed, and its queue goes too.

    Only what must hold after the expiry is checked: nothing here reads before it,
    so a slow machine cannot make the test race its own expiry."""
    app = make_app(url, result_expires=1)
    try:
        task_id = new_id()
        app.backend.mark_as_done(task_id, "short-lived")
        stored = time.monotonic()
        time.sleep(1.3)
        assert time.monotonic() - stored >= 1.3
        assert app.backend.get_task_meta(task_id, cache=False)["status"] == states.PENDING
        deadline = time.monotonic() + 10
        with RawBroker(vhost) as raw:
            while raw.exists(qname(task_id)) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not raw.exists(qname(task_id)), "queue outlived its result by > 10 s"
    finally:
        app.backend.close()


def test_result_expires_none_keeps_results(url, vhost) -> None:
    app = make_app(url, result_expires=None)
    try:
        task_id = new_id()
        app.backend.mark_as_done(task_id, "forever")
        queue = broker.queue(vhost, qname(task_id))
        assert "x-expires" not in queue["arguments"]
        with RawBroker(vhost) as raw:
            message = raw.peek(qname(task_id))
            assert "expiration" not in message.properties
            assert "expires-at" not in (message.properties.get("application_headers") or {})
    finally:
        app.backend.close()


def test_url_pointing_at_another_vhost_is_used(vhost) -> None:
    other_vhost = broker.new_vhost()
    try:
        app = make_app(broker.url_for(vhost))
        app.conf.result_backend = broker.url_for(other_vhost)
        task_id = new_id()
        app.backend.mark_as_done(task_id, "elsewhere")
        names = [q["name"] for q in broker.queues(other_vhost)]
        assert qname(task_id) in names
        assert qname(task_id) not in [q["name"] for q in broker.queues(vhost)]
        assert app.AsyncResult(task_id).get(timeout=5) == "elsewhere"
        app.backend.close()
    finally:
        broker.delete_vhost(other_vhost)


def test_bare_url_uses_the_task_brokers_vhost(url, vhost) -> None:
    app = make_app(url)
    app.conf.result_backend = "amqp://"
    try:
        task_id = new_id()
        app.backend.mark_as_done(task_id, "same-vhost")
        assert qname(task_id) in [q["name"] for q in broker.queues(vhost)]
    finally:
        app.backend.close()


def test_regression_processes_with_different_result_persistent(url, vhost) -> None:
    durable, transient = make_app(url), make_app(url, result_persistent=False)
    try:
        task_id = new_id()
        durable.backend.store_result(task_id, None, states.STARTED)
        transient.backend.mark_as_done(task_id, "from-transient")
        assert durable.AsyncResult(task_id).get(timeout=5) == "from-transient"
        with RawBroker(vhost) as raw:
            assert raw.peek(qname(task_id)).properties["delivery_mode"] == 1
    finally:
        durable.backend.close()
        transient.backend.close()


def test_regression_processes_with_different_result_expires(url, caplog) -> None:
    day, minute = make_app(url), make_app(url, result_expires=60)
    try:
        task_id = new_id()
        day.backend.store_result(task_id, None, states.STARTED)
        with caplog.at_level(logging.ERROR, logger="celery_amqp_results.store"):
            minute.backend.mark_as_done(task_id, "not lost")
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("result_expires" in m and qname(task_id) in m for m in errors), errors
        assert day.AsyncResult(task_id).get(timeout=5) == "not lost"
        assert minute.AsyncResult(task_id).get(timeout=5) == "not lost"
    finally:
        day.backend.close()
        minute.backend.close()


def test_no_queue_left_behind_after_forget(app, vhost) -> None:
    ids = [new_id() for _ in range(20)]
    for task_id in ids:
        app.backend.mark_as_done(task_id, task_id)
    for task_id in ids:
        assert app.AsyncResult(task_id).get(timeout=5) == task_id
        app.AsyncResult(task_id).forget()
    names = {q["name"] for q in broker.queues(vhost)}
    assert not names & {qname(t) for t in ids}


def test_store_redeclares_a_queue_deleted_behind_its_back(app, vhost) -> None:
    """The writer remembers it declared the queue; the broker returns the state as
    unroutable (mandatory publish), and the writer declares and publishes again."""
    task_id = new_id()
    app.backend.store_result(task_id, {"step": 1}, "PROGRESS")
    with RawBroker(vhost) as raw:
        raw.channel.queue_delete(qname(task_id))
        assert not raw.exists(qname(task_id))
    app.backend.mark_as_done(task_id, "not dropped")
    assert app.backend.get_task_meta(task_id, cache=False)["result"] == "not dropped"
    with RawBroker(vhost) as raw:
        assert raw.message_count(qname(task_id)) == 1


def test_connection_errors_are_safe_to_retry(backend) -> None:
    """result_backend_always_retry goes through Celery's wrapper, which asks this."""
    assert backend.exception_safe_to_retry(ConnectionRefusedError(111, "refused"))
    assert not backend.exception_safe_to_retry(ValueError("bad value"))


def test_failover_url_list_reaches_the_live_host(vhost) -> None:
    """kombu's ``;``-separated failover form: the first host is dead, the second serves."""
    live = broker.url_for(vhost)
    dead = f"amqp://guest:guest@{broker.HOST}:1/{vhost}"
    app = make_app(live)
    app.conf.result_backend = f"{dead};{live}"
    try:
        assert "guest:guest" not in app.backend.as_uri()
        task_id = new_id()
        app.backend.mark_as_done(task_id, "via failover")
        assert app.AsyncResult(task_id).get(timeout=10) == "via failover"
        assert app.backend.get_task_meta(task_id, cache=False)["result"] == "via failover"
    finally:
        app.backend.close()


@pytest.mark.timeout(60)
def test_regression_store_after_reading_an_unknown_id(app) -> None:
    """A 404 on a peek makes the broker close the pooled channel and py-amqp reopen it;
    py-amqp 5.3 then forgot to select confirms again, and the next store waited for a
    confirm for ever (Celery 5.3's stack: a chord applied after a result.get() hung)."""
    backend = app.backend
    backend.mark_as_done(new_id(), "first")
    for _ in range(3):
        assert backend.get_task_meta(new_id(), cache=False)["status"] == states.PENDING
        task_id = new_id()
        backend.mark_as_done(task_id, "after a 404")
        assert backend.get_task_meta(task_id, cache=False)["result"] == "after a 404"


def test_result_lives_result_expires_after_its_last_state(url) -> None:
    """Every store renews the queue's x-expires (a publish alone does not): a task whose
    first state is older than result_expires still has its final state read."""
    app = make_app(url, result_expires=6)
    try:
        task_id = new_id()
        app.backend.store_result(task_id, None, states.STARTED)
        time.sleep(4)
        app.backend.mark_as_done(task_id, "late but kept")
        # 7 s after the queue was created, 3 s after the last state: a margin of 3 s
        # for a busy machine between the store and the read.
        time.sleep(3)
        meta = app.backend.get_task_meta(task_id, cache=False)
        assert (meta["status"], meta["result"]) == (states.SUCCESS, "late but kept")
    finally:
        app.backend.close()


def test_date_done_carries_an_offset(app) -> None:
    """Celery 5.3 would store a naive utcnow(): every version stores an aware time here."""
    from datetime import datetime

    task_id = new_id()
    app.backend.mark_as_done(task_id, 1)
    stored = app.backend.get_task_meta(task_id, cache=False)["date_done"]
    value = stored if isinstance(stored, datetime) else datetime.fromisoformat(stored)
    assert value.tzinfo is not None


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_result_stays_readable_through_hundreds_of_polls(url, vhost, queue_type) -> None:
    """Every read requeues the state; RabbitMQ 4.0's quorum queues count that as a
    delivery and drop a message past their default limit of 20 (topology.py)."""
    app = make_app(url, amqp_results_queue_type=queue_type)
    try:
        task_id = new_id()
        app.backend.mark_as_done(task_id, {"n": 1})
        seen = [app.backend.get_task_meta(task_id, cache=False)["status"]
                for _ in range(300)]
        lost = [n for n, status in enumerate(seen) if status != states.SUCCESS]
        assert not lost, f"read {lost[0] + 1} of 300 saw {seen[lost[0]]}"
        with RawBroker(vhost) as raw:
            assert raw.message_count(qname(task_id)) == 1
        queue = broker.queue(vhost, qname(task_id))
        assert queue["arguments"].get("x-queue-type", "classic") == queue_type
    finally:
        app.backend.forget(task_id)
        app.backend.close()
