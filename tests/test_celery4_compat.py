"""The Celery 4 compatible topology (amqp_results_topology = "celery4") on the real broker.

Celery 4.4's side is played by py-amqp alone, doing on the wire what Celery 4.4.7's
celery/backends/amqp.py did through kombu 4.6.11 (see celery4/topology.py for the
facts and their sources): the same exchange, queue name, queue arguments, binding,
message properties and JSON body.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional

import amqp
import pytest
from celery import Celery, chord, signature, states
from celery.app.task import Context
from celery.exceptions import TimeoutError
from celery.result import GroupResult, ResultSet

from celery_amqp_results.celery4.topology import Celery4Topology
from celery_amqp_results.settings import Settings
from tests import broker
from tests.broker import HOST, PORT, RawBroker
from tests.conftest import ROOT, make_app, running_worker, stop_process

EXCHANGE = "celeryresults"
DAY_MS = 24 * 3600 * 1000
#: The fields of a Celery 4.4 state with result_extended, in its order.
CELERY4_FIELDS = ["task_id", "status", "result", "traceback", "children",
                  "name", "args", "kwargs", "worker", "retries", "queue"]
#: The queue the compat worker consumes, so the suite's other worker never takes its tasks.
COMPAT_QUEUE = "celery4-compat"


class Celery4Error(Exception):
    """An exception type a Celery 4 worker reports by module and name."""


def new_id() -> str:
    return str(uuid.uuid4())


def rkey(task_id: str) -> str:
    return task_id.replace("-", "")


class Celery4Wire:
    """A py-amqp connection doing what Celery 4.4's amqp backend did on the wire."""

    def __init__(self, vhost: str) -> None:
        self.conn = amqp.Connection(f"{HOST}:{PORT}", userid="guest", password="guest",
                                    virtual_host=vhost)
        self.conn.connect()
        self.channel = self.conn.channel()
        # Confirms are not part of Celery 4's format; they only make the test wait
        # until the broker holds the state before our backend reads it.
        self.channel.confirm_select()

    def declare(self, name: str, expires_ms: int = DAY_MS) -> None:
        """kombu 4.6's Queue.declare() for a Celery 4 result queue, before every
        store, poll and get() (amqp.py:139, 164, 229)."""
        self.channel.exchange_declare(EXCHANGE, "direct", durable=True, auto_delete=False)
        self.channel.queue_declare(name, durable=True, auto_delete=True,
                                   arguments={"x-expires": expires_ms})
        self.channel.queue_bind(name, EXCHANGE, routing_key=name)

    def store(self, task_id: str, payload: Dict[str, Any]) -> None:
        """Celery 4.4's store_result: declare, then publish to the exchange."""
        name = rkey(task_id)
        self.declare(name)
        self.channel.basic_publish(
            amqp.Message(json.dumps(payload).encode("utf-8"),
                         content_type="application/json", content_encoding="utf-8",
                         application_headers={}, priority=0, delivery_mode=2,
                         correlation_id=task_id),
            exchange=EXCHANGE, routing_key=name)

    def get_consuming(self, task_id: str) -> amqp.Message:
        """Celery 4.4's AsyncResult.get(): declare, consume (no ack) the first state, cancel."""
        name = rkey(task_id)
        self.declare(name)
        received: List[amqp.Message] = []
        tag = self.channel.basic_consume(name, no_ack=True, callback=received.append)
        while not received:
            self.conn.drain_events(timeout=10)
        self.channel.basic_cancel(tag)
        return received[0]

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def wire(vhost: str) -> Iterator[Celery4Wire]:
    wire = Celery4Wire(vhost)
    yield wire
    wire.close()


@pytest.fixture
def c4app(url: str) -> Iterator[Celery]:
    """A client app in the Celery 4 topology."""
    app = make_app(url, amqp_results_topology="celery4", result_extended=True)
    yield app
    app.backend.close()


@pytest.fixture
def c4writer(url: str) -> Iterator[Any]:
    """A second app in the Celery 4 topology, storing as a worker would."""
    app = make_app(url, amqp_results_topology="celery4")
    yield app.backend
    app.backend.close()


def celery4_state(task_id: str, status: str, result: Any, **fields: Any) -> Dict[str, Any]:
    """A state body exactly as a Celery 4.4.7 worker sent it with result_extended (its
    ``name`` is None: amqp.py:122 reads request.task_name, which a worker's request lacks)."""
    body = {"task_id": task_id, "status": status, "result": result, "traceback": None,
            "children": [], "name": None, "args": [2, 3], "kwargs": {},
            "worker": "celery@old-host", "retries": 0, "queue": "celery"}
    body.update(fields)
    return body


# -- (1) a state stored as Celery 4.4 stored it, read here --------------------------------------

def test_reads_a_failure_stored_as_celery_4_4_stored_it(c4app, wire, vhost) -> None:
    task_id = new_id()
    wire.store(task_id, celery4_state(task_id, states.STARTED,
                                      {"pid": 4242, "hostname": "celery@old-host"}))
    traceback = "Traceback (most recent call last):\n  ...\nCelery4Error: disk full"
    wire.store(task_id, celery4_state(
        task_id, states.FAILURE,
        {"exc_type": "Celery4Error", "exc_message": ["disk full", 28], "exc_module": __name__},
        traceback=traceback))

    meta = c4app.backend.get_task_meta(task_id, cache=False)
    assert meta["status"] == states.FAILURE
    assert type(meta["result"]) is Celery4Error
    assert meta["result"].args == ("disk full", 28)
    assert meta["traceback"] == traceback
    assert meta["worker"] == "celery@old-host" and meta["args"] == [2, 3]
    result = c4app.AsyncResult(task_id)
    assert result.state == states.FAILURE
    assert result.traceback == traceback
    with pytest.raises(Celery4Error, match="disk full"):
        result.get(timeout=5)

    # The read kept the newest state for whoever reads next (a Celery 4 client
    # too) and dropped the older one, as Celery 4's own poll did.
    with RawBroker(vhost) as raw:
        assert raw.message_count(rkey(task_id)) == 1
        assert json.loads(raw.peek(rkey(task_id)).body)["status"] == states.FAILURE


def test_reads_a_success_and_builtin_exception_stored_by_celery_4_4(c4app, wire) -> None:
    done, failed = new_id(), new_id()
    wire.store(done, celery4_state(done, states.SUCCESS, {"rows": [1, 2]}))
    wire.store(failed, celery4_state(failed, states.FAILURE, {
        "exc_type": "KeyError", "exc_message": ["missing"], "exc_module": "builtins"}))
    assert c4app.AsyncResult(done).get(timeout=5) == {"rows": [1, 2]}
    error = c4app.AsyncResult(failed).result
    assert type(error) is KeyError and error.args == ("missing",)
    # Celery 4.4 sent no date_done: a reader gets None, not an error.
    assert c4app.AsyncResult(done).date_done is None


# -- (2) a state stored here, read as Celery 4.4 read it ------------------------------------------

def test_a_state_stored_here_is_what_celery_4_4_reads(c4app, wire, vhost) -> None:
    task_id = new_id()
    request = Context(id=task_id, task="compat.add", args=[2, 3], kwargs={"z": 1},
                      hostname="celery@new-host", retries=2, correlation_id=task_id,
                      delivery_info={"routing_key": "celery"})
    c4app.backend.store_result(task_id, ValueError("boom", 7), states.FAILURE,
                               traceback="Traceback: boom", request=request)
    name = rkey(task_id)

    queue = broker.queue(vhost, name)
    assert (queue["durable"], queue["auto_delete"]) == (True, True)
    assert queue["arguments"] == {"x-expires": DAY_MS}
    assert {"source_name": EXCHANGE, "destination_name": name, "routing_key": name} \
        in broker.bindings(vhost)

    # Celery 4.4 declares the same queue before it reads: no PRECONDITION_FAILED.
    message = wire.get_consuming(task_id)
    assert message.properties == {
        "content_type": "application/json", "content_encoding": "utf-8",
        "application_headers": {}, "priority": 0, "delivery_mode": 2,
        "correlation_id": task_id}  # and no expiration: Celery 4 set none
    assert message.delivery_info["exchange"] == EXCHANGE
    assert message.delivery_info["routing_key"] == name

    body = json.loads(message.body)
    assert list(body)[:len(CELERY4_FIELDS)] == CELERY4_FIELDS
    assert set(body) - set(CELERY4_FIELDS) == {"date_done"}  # Celery 5's, ignored by 4.4
    assert body["task_id"] == task_id and body["status"] == states.FAILURE
    assert body["result"] == {"exc_type": "ValueError", "exc_message": ["boom", 7],
                              "exc_module": "builtins"}
    assert body["traceback"] == "Traceback: boom"
    assert body["children"] == []
    assert (body["name"], body["args"], body["kwargs"], body["worker"], body["retries"],
            body["queue"]) == ("compat.add", [2, 3], {"z": 1}, "celery@new-host", 2, "celery")

    # A Celery 4 get() consumed the auto-delete queue: the result is gone for everyone.
    with RawBroker(vhost) as raw:
        assert not raw.exists(name)
    assert c4app.backend.get_task_meta(task_id, cache=False)["status"] == states.PENDING


def test_every_state_is_queued_for_celery_4_readers_and_a_poll_keeps_the_newest(
        c4app, c4writer, vhost) -> None:
    task_id = new_id()
    c4writer.store_result(task_id, None, states.STARTED)
    c4writer.store_result(task_id, {"step": 1}, "PROGRESS")
    c4writer.store_result(task_id, 3, states.SUCCESS)
    with RawBroker(vhost) as raw:
        assert raw.message_count(rkey(task_id)) == 3  # no max-length, as in Celery 4
    for _ in range(3):
        assert c4app.backend.get_task_meta(task_id, cache=False)["result"] == 3
    with RawBroker(vhost) as raw:
        assert raw.message_count(rkey(task_id)) == 1


def test_forget_deletes_the_queue(c4app, c4writer, vhost) -> None:
    task_id = new_id()
    c4writer.mark_as_done(task_id, 1)
    c4app.AsyncResult(task_id).forget()
    with RawBroker(vhost) as raw:
        assert not raw.exists(rkey(task_id))
    assert c4writer.get_task_meta(task_id, cache=False)["status"] == states.PENDING


def test_ids_equal_without_dashes_share_a_queue_but_not_a_state(c4app, c4writer, vhost) -> None:
    base = uuid.uuid4().hex
    dashed = f"{base[:8]}-{base[8:]}"
    c4writer.mark_as_done(base, "plain")
    c4writer.mark_as_done(dashed, "dashed")
    assert c4app.backend.get_task_meta(base, cache=False)["result"] == "plain"
    assert c4app.backend.get_task_meta(dashed, cache=False)["result"] == "dashed"
    assert c4app.AsyncResult(base).get(timeout=5) == "plain"
    with RawBroker(vhost) as raw:
        assert raw.message_count(base) == 2  # the other task's state was put back


def test_a_queue_declared_with_another_expiry_still_stores_and_names_the_setting(
        c4app, wire, caplog) -> None:
    task_id = new_id()
    wire.declare(rkey(task_id), expires_ms=3600 * 1000)  # a fleet with result_expires=1h
    with caplog.at_level(logging.ERROR):
        c4app.backend.mark_as_done(task_id, "stored anyway")
    assert "result_expires" in caplog.text and "x-expires" in caplog.text
    assert c4app.backend.get_task_meta(task_id, cache=False)["result"] == "stored anyway"


# -- (4) waits: pushed, one deadline, nothing left behind -----------------------------------------

def waiter_bindings(vhost: str, task_id: str) -> List[Dict[str, Any]]:
    """Bindings of a waiter's own queue to the result exchange for ``task_id``."""
    return [b for b in broker.bindings(vhost)
            if b["source_name"] == EXCHANGE and b["routing_key"] == rkey(task_id)
            and b["destination_name"] != rkey(task_id)]


def test_a_wait_has_a_deadline_and_leaves_nothing_behind(c4app, vhost) -> None:
    task_id = new_id()
    with pytest.raises(TimeoutError):
        c4app.AsyncResult(task_id).get(timeout=0.5)
    with pytest.raises(TimeoutError):
        c4app.AsyncResult(task_id).get(timeout=0)
    assert waiter_bindings(vhost, task_id) == []
    assert [c for c in broker.consumers(vhost) if c["queue_name"].startswith("amq.gen-")] == []
    with RawBroker(vhost) as raw:
        assert not raw.exists(rkey(task_id))  # a wait declares no result queue


def test_a_wait_sees_every_state_a_celery_4_worker_pushes_in_order(c4app, wire, vhost) -> None:
    task_id = new_id()
    seen: List[Dict[str, Any]] = []
    outcome: Dict[str, Any] = {}

    def wait() -> None:
        try:
            outcome["value"] = c4app.AsyncResult(task_id).get(timeout=20, on_message=seen.append)
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    waiting = threading.Thread(target=wait)
    waiting.start()
    deadline = time.monotonic() + 15
    while not waiter_bindings(vhost, task_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert waiter_bindings(vhost, task_id), "the wait never bound its queue"
    wire.store(task_id, celery4_state(task_id, states.STARTED, {"pid": 1}))
    wire.store(task_id, celery4_state(task_id, "PROGRESS", {"step": 1}))
    wire.store(task_id, celery4_state(task_id, states.SUCCESS, "done"))
    waiting.join(30)
    assert outcome == {"value": "done"}
    assert [m["status"] for m in seen] == [states.STARTED, "PROGRESS", states.SUCCESS]
    assert waiter_bindings(vhost, task_id) == []


def test_timeout_zero_returns_a_finished_result(c4app, c4writer) -> None:
    task_id = new_id()
    c4writer.mark_as_done(task_id, "ready")
    assert c4app.AsyncResult(task_id).get(timeout=0) == "ready"


def test_a_join_waits_for_all_with_one_deadline(c4app, c4writer) -> None:
    ids = [new_id() for _ in range(3)]
    c4writer.mark_as_done(ids[0], 0)
    results = ResultSet([c4app.AsyncResult(task_id) for task_id in ids])
    threading.Timer(0.3, lambda: [c4writer.mark_as_done(i, n) for n, i in
                                  enumerate(ids) if n]).start()
    assert results.join_native(timeout=20) == [0, 1, 2]
    with pytest.raises(TimeoutError):
        ResultSet([c4app.AsyncResult(new_id()), c4app.AsyncResult(ids[0])]).join_native(
            timeout=0.3)


# -- groups, chords, pickling ---------------------------------------------------------------------

def test_groups_are_saved_and_add_to_chord_is_refused_naming_the_setting(c4app, c4writer) -> None:
    ids = [new_id(), new_id()]
    for n, task_id in enumerate(ids):
        c4writer.mark_as_done(task_id, n)
    saved = GroupResult(new_id(), [c4app.AsyncResult(task_id) for task_id in ids], app=c4app)
    saved.save()
    restored = GroupResult.restore(saved.id, app=c4app)
    assert restored is not None and restored.get(timeout=5) == [0, 1]
    with pytest.raises(NotImplementedError, match="amqp_results_topology='celery4'"):
        c4app.backend.add_to_chord(saved.id, c4app.AsyncResult(ids[0]))


def test_a_pickled_backend_keeps_the_celery4_topology(c4app) -> None:
    clone = pickle.loads(pickle.dumps(c4app.backend))
    try:
        assert type(clone).__name__ == "Celery4Backend"
        assert clone.rkey("ab-cd") == "abcd"
    finally:
        clone.close()


# -- (5) the setting -------------------------------------------------------------------------------

def test_an_unknown_topology_is_refused_with_its_name(url) -> None:
    app = make_app(url, amqp_results_topology="celery3")
    with pytest.raises(ValueError, match=r"amqp_results_topology must be one of "
                                         r"'default', 'celery4', got 'celery3'"):
        app.backend  # noqa: B018 - creating the backend is what is tested
    with pytest.raises(ValueError, match="amqp_results_topology"):
        Settings.from_conf({"amqp_results_topology": ["celery4"]})
    assert Settings.from_conf({}).topology == "default"
    assert type(make_app(url).backend).__name__ == "AMQPBackend"


def test_an_exchange_type_that_cannot_route_by_task_is_refused(url) -> None:
    app = make_app(url, amqp_results_topology="celery4", result_exchange_type="fanout")
    with pytest.raises(ValueError, match="result_exchange_type must be 'direct'"):
        app.backend  # noqa: B018


def test_wire_layout_follows_the_settings_as_celery_4_did() -> None:
    """Pure: what Celery 4.4 derived from result_persistent and result_expires."""
    transient = Celery4Topology(EXCHANGE, "direct", 1.0009, persistent=False)
    assert transient.queue_arguments == {"x-expires": 1000}  # kombu 4.6: int(), not round()
    queue = transient.result_queue("abc")
    assert (queue.durable, queue.auto_delete, queue.routing_key) == (False, True, "abc")
    assert transient.exchange.durable is False
    assert transient.properties("id", "application/json", "utf-8")["delivery_mode"] == 1
    assert Celery4Topology(EXCHANGE, "direct", None, persistent=True).queue_arguments == {}


# -- (3) a real worker storing in the Celery 4 topology -------------------------------------------

@pytest.fixture(scope="module")
def compat_worker(url: str) -> Iterator[Celery]:
    """A real prefork worker running tests/tasks_celery4.py, consuming COMPAT_QUEUE only."""
    with running_worker("tests.tasks_celery4", url, "celery4-worker.log", "--pool=prefork",
                        "--concurrency=1", "-Q", COMPAT_QUEUE,
                        node_prefix="car-celery4") as tasks:
        yield tasks


def send(app: Celery, name: str, *args: Any) -> Any:
    return app.send_task(name, args, queue=COMPAT_QUEUE)


def test_a_worker_stores_in_the_celery4_topology_and_a_client_reads(
        compat_worker, c4app, vhost) -> None:
    result = send(c4app, "compat.add", 2, 3)
    assert result.get(timeout=30) == 5
    assert result.state == states.SUCCESS
    assert result.date_done is not None
    assert (result.name, result.args, result.kwargs) == ("compat.add", [2, 3], {})
    # The wait was answered by a push; a poll drops the STARTED state and keeps SUCCESS.
    assert c4app.backend.get_task_meta(result.id, cache=False)["result"] == 5
    with RawBroker(vhost) as raw:
        assert raw.message_count(rkey(result.id)) == 1
        stored = raw.peek(rkey(result.id))
        assert stored is not None and json.loads(stored.body)["status"] == states.SUCCESS
        assert stored.delivery_info["exchange"] == EXCHANGE
    # Another client, in another process, reads it again.
    code = ("import sys; from tests.conftest import make_app; "
            "app = make_app(sys.argv[1], amqp_results_topology='celery4'); "
            "print(app.AsyncResult(sys.argv[2]).get(timeout=10))")
    out = subprocess.run([sys.executable, "-c", code, broker.url_for(vhost), result.id],
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "5", out.stderr

    failed = send(c4app, "compat.fail", "broken")
    with pytest.raises(ValueError, match="broken"):
        failed.get(timeout=30)
    assert "ValueError: broken" in failed.traceback
    seen: List[str] = []
    assert send(c4app, "compat.progress", 3).get(
        timeout=30, on_message=lambda meta: seen.append(meta["status"])) == 3
    assert seen[-1] == states.SUCCESS and set(seen) <= {states.STARTED, "PROGRESS",
                                                        states.SUCCESS}


def test_a_chord_completes_through_celery_chord_unlock(compat_worker, c4app) -> None:
    add = [signature("compat.add", (i, i), app=c4app).set(queue=COMPAT_QUEUE)
           for i in range(3)]
    body = signature("compat.total", app=c4app).set(queue=COMPAT_QUEUE)
    result = chord(add, body).apply_async()
    assert result.get(timeout=30) == 0 + 2 + 4
    parent: Optional[Any] = result.parent
    assert parent is not None and parent.get(timeout=5) == [0, 2, 4]


# -- the same against a real Celery 4.4 (opt-in) --------------------------------------------------
#
# These need an interpreter that imports Celery 4.4 (it does not import on Python 3.11;
# it does on 3.8; pip >= 24.1 refuses its metadata), e.g.
#   python3.8 -m venv /tmp/celery44 && /tmp/celery44/bin/pip install "pip<24.1"
#   /tmp/celery44/bin/pip install celery==4.4.7
#   CAR_CELERY4_PYTHON=/tmp/celery44/bin/python .venv/bin/pytest tests/test_celery4_compat.py

CELERY4_PYTHON = os.environ.get("CAR_CELERY4_PYTHON")
LEGACY = ROOT / "tests" / "celery44"
LEGACY_QUEUE = "celery44-legacy"
needs_celery44 = pytest.mark.skipif(
    not CELERY4_PYTHON, reason="set CAR_CELERY4_PYTHON to a Python with Celery 4.4 installed")


def legacy_env(url: str) -> Dict[str, str]:
    env = dict(os.environ, CAR_TEST_URL=url, PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (os.environ.get("CAR_CELERY4_PYTHONPATH"), str(LEGACY)) if p)
    return env


def legacy_client(url: str, *args: str) -> List[Dict[str, Any]]:
    assert CELERY4_PYTHON
    out = subprocess.run([CELERY4_PYTHON, str(LEGACY / "legacy_client.py"), url, *args],
                         env=legacy_env(url), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.fixture(scope="module")
def legacy_worker(url: str) -> Iterator[subprocess.Popen]:
    """A real Celery 4.4 worker with Celery 4's own amqp result backend."""
    assert CELERY4_PYTHON
    cache = ROOT / ".pytest_cache"
    log: Any = open(cache / "celery44-worker.log", "w") if cache.is_dir() else subprocess.DEVNULL
    proc = subprocess.Popen(
        [CELERY4_PYTHON, "-m", "celery", "-A", "legacy_tasks", "worker", "--pool=solo",
         "--loglevel=INFO", "--without-gossip", "--without-mingle", "--without-heartbeat",
         "-Q", LEGACY_QUEUE, "-n", f"car-celery44-{os.getpid()}@localhost"],
        cwd=LEGACY, env=legacy_env(url), stdout=log, stderr=subprocess.STDOUT)
    yield proc
    stop_process(proc)


@needs_celery44
def test_real_celery_4_4_worker_stores_and_we_read(legacy_worker, c4app) -> None:
    result = c4app.send_task("legacy.add", (2, 3), queue=LEGACY_QUEUE)
    assert result.get(timeout=60) == 5  # the first wait also covers the worker's start
    assert c4app.backend.get_task_meta(result.id, cache=False)["worker"]
    failed = c4app.send_task("legacy.fail", ("old boom",), queue=LEGACY_QUEUE)
    with pytest.raises(ValueError, match="old boom"):
        failed.get(timeout=30)
    assert "ValueError: old boom" in failed.traceback


@needs_celery44
def test_real_celery_4_4_client_reads_what_we_store(c4writer, url) -> None:
    done, failed, consumed = new_id(), new_id(), new_id()
    c4writer.store_result(done, None, states.STARTED)
    c4writer.mark_as_done(done, {"x": [1, 2]})
    c4writer.mark_as_failure(failed, KeyError("nope"), traceback="Traceback: KeyError nope")
    c4writer.mark_as_done(consumed, "read once")
    polled = legacy_client(url, "poll", done, failed)
    assert [(line["polled"], line["value"]) for line in polled] == [
        (states.SUCCESS, "{'x': [1, 2]}"), (states.FAILURE, "raised KeyError('nope')")]
    assert polled[1]["traceback"] == "Traceback: KeyError nope"
    # A Celery 4 get() consumes the auto-delete queue: gone for everyone after it.
    (line,) = legacy_client(url, "get", consumed)
    assert (line["value"], line["then"]) == ("'read once'", states.PENDING)
    assert c4writer.get_task_meta(consumed, cache=False)["status"] == states.PENDING


@needs_celery44
def test_real_celery_4_4_client_waits_on_our_worker(compat_worker, url) -> None:
    added, failed = legacy_client(url, "send", COMPAT_QUEUE)
    assert (added["state"], added["value"]) == (states.SUCCESS, "42")
    assert (failed["state"], failed["value"]) == (states.FAILURE, "raised ValueError('bad')")


def installation_major() -> int:
    """Major version of the RabbitMQ installation private nodes start from."""
    return int(broker.broker_version().split(".")[0])


@pytest.mark.skipif(installation_major() < 4, reason="RabbitMQ 3.x has no deprecated "
                    "features to refuse (it will not boot with the setting)")
def test_transient_queues_refused_by_rabbitmq_4_is_a_clear_error() -> None:
    """What a RabbitMQ 4.3 user with Celery 4's result_persistent=False gets (4.3 refuses
    transient non-exclusive queues by default; 4.0 does when told to)."""
    from celery_amqp_results.errors import ResultBrokerError
    from tests.conftest import make_app
    from tests.private_node import PrivateNode

    with PrivateNode(extra_config="deprecated_features.permit.transient_nonexcl_queues "
                                  "= false") as node:
        refused = make_app(node.url, amqp_results_topology="celery4",
                           result_persistent=False)
        durable = make_app(node.url, amqp_results_topology="celery4",
                           result_persistent=True)
        try:
            task_id = str(uuid.uuid4())
            with pytest.raises(ResultBrokerError) as error:
                refused.backend.mark_as_done(task_id, 1)
            assert not error.value.retryable
            assert "the broker refused Celery 4 result queue '" in str(error.value)
            assert "result_persistent=True" in str(error.value)
            assert "transient_nonexcl_queues" in str(error.value)
            # Durable Celery 4 queues are what works: stored and read back.
            durable.backend.mark_as_done(task_id, 2)
            assert durable.AsyncResult(task_id).get(timeout=10) == 2
        finally:
            refused.backend.close()
            durable.backend.close()
