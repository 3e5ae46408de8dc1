"""Results on a 3-node RabbitMQ cluster: failover URLs, quorum result queues, nodes killed.

Every test runs against one private cluster of this module (tests/cluster.py:
three nodes with their own names, ports and data, joined with ``rabbitmqctl
join_cluster``); nodes are killed with SIGKILL by pid and started again.  The
shared node on 127.0.0.1:5672 is never touched.

The default suite runs the smoke tests (the cluster forms and survives a node,
the quorum queue arguments on a real cluster, the store protocol that keeps a
quorum queue's newest state, a failover URL whose first node is dead): about
30 s.  The rest take about three minutes more and run with::

    CAR_CLUSTER_TESTS=1 .venv/bin/pytest tests/test_cluster.py -q -s

(``-s`` prints what was measured: start, stop and failover times.)
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from typing import Any, Dict, Iterator, List, Tuple

import amqp
import kombu
import pytest
from celery import Celery, states
from celery.result import ResultSet

from celery_amqp_results import AMQPBackend, ResultStoreError
from celery_amqp_results.channel import nack_requeue
from celery_amqp_results.naming import Names
from celery_amqp_results.replace import replace
from celery_amqp_results.settings import Settings
from celery_amqp_results.topology import Topology
from tests.cluster import Cluster, ClusterNode, process_alive

TASK_PREFIX = "celery-results.task."

#: Setup counts against the first test's timeout: booting and joining three nodes takes
#: ~30 s on a quiet machine and took over 120 s (the suite's default) beside two
#: CPU-burning processes, each rabbitmqctl call starting an Erlang VM.
pytestmark = pytest.mark.timeout(600)

#: The tests that take minutes run only when asked for (see the module docstring).
full = pytest.mark.skipif(
    not os.environ.get("CAR_CLUSTER_TESTS"),
    reason="cluster fault tests take minutes: CAR_CLUSTER_TESTS=1 runs them")

#: What the tests measured, printed at the end of the module (run with -s).
MEASURED: Dict[str, str] = {}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """One 3-node cluster for this module, removed (data and all) at the end."""
    private = Cluster(3)
    try:
        private.start()
        MEASURED["cluster start: boot 3 nodes, join, all running (s)"] = \
            f"{private.last_start_seconds:.1f}"
        yield private
    finally:
        private.destroy()
        MEASURED["cluster stop and remove (s)"] = f"{private.last_stop_seconds:.1f}"
        for name, value in MEASURED.items():
            print(f"[test_cluster] {name}: {value}")


@pytest.fixture
def whole(cluster: Cluster) -> Cluster:
    """The cluster with all three nodes running (a failed test may have left one down)."""
    down = [index for index, node in enumerate(cluster.nodes) if not node.running]
    for index in down:
        cluster.start_node(index)
    return cluster


@contextlib.contextmanager
def celery_app(url: str, **conf: Any) -> Iterator[Celery]:
    """A Celery app whose broker and result backend are ``url``; its backend closed after."""
    app = Celery("cluster-tests", broker=url, backend=url, set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=True, **conf)
    try:
        assert isinstance(app.backend, AMQPBackend)
        yield app
    finally:
        app.backend.close()


@contextlib.contextmanager
def quorum_app(url: str, **conf: Any) -> Iterator[Celery]:
    """An app storing results in quorum queues (``amqp_results_queue_type``)."""
    with celery_app(url, amqp_results_queue_type="quorum", **conf) as app:
        assert app.backend.topology.queue_type == "quorum", \
            "the backend does not pass settings.queue_type to its Topology"
        yield app


def leaders(cluster: Cluster, task_ids: List[str]) -> Dict[str, Dict[str, Any]]:
    """The ``list_queues`` row of each task's result queue, by task id."""
    wanted = {TASK_PREFIX + task_id: task_id for task_id in task_ids}
    return {wanted[row["name"]]: row for row in cluster.queues(prefix=TASK_PREFIX)
            if row["name"] in wanted}


def raw_channel(node: ClusterNode) -> Tuple[amqp.Connection, Any]:
    """A plain py-amqp connection to ``node`` (publishes confirmed) and a channel on it."""
    conn = amqp.Connection(f"127.0.0.1:{node.port}", userid="guest", password="guest",
                           confirm_publish=True)
    conn.connect()
    return conn, conn.channel()


# -- the setting, without a broker ---------------------------------------------------------------

def test_queue_type_setting_and_the_arguments_it_gives() -> None:
    assert Settings.from_conf({}).queue_type == "classic"
    assert Settings.from_conf({"amqp_results_queue_type": "quorum"}).queue_type == "quorum"
    with pytest.raises(ValueError, match="must be one of 'classic', 'quorum', got 'stream'"):
        Settings.from_conf({"amqp_results_queue_type": "stream"})
    with pytest.raises(ValueError, match="needs the default topology"):
        Settings.from_conf({"amqp_results_queue_type": "quorum",
                            "amqp_results_topology": "celery4"})

    names = Names("p.")
    classic = Topology(names, "celeryresults", "direct", 10.0, True)
    quorum = Topology(names, "celeryresults", "direct", 10.0, True, queue_type="quorum")
    assert "x-queue-type" not in classic.storage_queue("p.task.x").queue_arguments
    assert quorum.storage_queue("p.task.x").queue_arguments == {
        "x-max-length": 1, "x-overflow": "drop-head", "x-expires": 10_000,
        "x-queue-type": "quorum", "x-queue-leader-locator": "balanced",
        "x-delivery-limit": 2**31 - 1}
    # Chord queues stay classic: their exclusive read needs classic queues.
    for queue in (quorum.chord_log_queue("p.chord.g"), quorum.chord_size_queue("p.chord-size.g")):
        assert "x-queue-type" not in queue.queue_arguments
    clash = quorum.explain_mismatch(
        "p.task.x", "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue")
    assert "amqp_results_queue_type" in clash and "'quorum'" in clash


# -- smoke tests (default suite) -----------------------------------------------------------------

def test_cluster_forms_and_a_killed_node_rejoins(whole: Cluster) -> None:
    cluster = whole
    names = sorted(node.nodename for node in cluster.nodes)
    assert sorted(cluster.running_nodes()) == names
    assert len({node.port for node in cluster.nodes}) == 3

    victim = cluster.nodes[2]
    pid = victim.beam_pid
    assert pid is not None
    cluster.kill(2)
    assert not process_alive(pid)
    assert sorted(cluster.running_nodes(cluster.nodes[0])) == sorted(
        node.nodename for node in cluster.nodes[:2])

    began = time.monotonic()
    cluster.start_node(2)
    MEASURED["killed node started again, running in the cluster (s)"] = \
        f"{time.monotonic() - began:.1f}"
    assert sorted(cluster.running_nodes(victim)) == names


def test_quorum_result_queue_arguments_on_a_cluster(whole: Cluster) -> None:
    """What topology.py declares in quorum mode is accepted, replicated, newest-only,
    and has its leaders spread over the nodes however clients connect."""
    cluster = whole
    topology = Topology(Names("celery-results."), "celeryresults", "direct", 60.0, True,
                        queue_type="quorum")
    names = [f"{TASK_PREFIX}{uuid.uuid4()}" for _ in range(12)]
    with kombu.Connection(cluster.urls[0]) as conn:  # every queue declared through node 0
        channel = conn.channel()
        for name in names:
            topology.storage_queue(name).queue_declare(channel=channel)
        for index in range(3):
            channel.basic_publish(amqp.Message(f"state {index}", delivery_mode=2),
                                  exchange="", routing_key=names[0], mandatory=True)
        time.sleep(0.5)
        rows = {row["name"]: row for row in cluster.queues(prefix=TASK_PREFIX)}
        newest = channel.basic_get(names[0], no_ack=True)
        behind_it = channel.basic_get(names[0], no_ack=True)
        for name in names:
            channel.queue_delete(name)
    assert all(rows[name]["type"] == "quorum" for name in names)
    assert all(len(rows[name]["members"]) == 3 for name in names)
    assert (newest.body, behind_it) == ("state 2", None)
    led_by = {rows[name]["node"] for name in names}
    # Declared through one node, yet led by several (x-queue-leader-locator=balanced).
    assert len(led_by) >= 2


def settled(node: ClusterNode, name: str, ready: int = 1, unacked: int = 0,
            limit: float = 30) -> None:
    """Until queue ``name`` holds ``ready`` ready and ``unacked`` unacknowledged messages: a
    publish or a requeue (both asynchronous, no reply) has reached the queue, however busy
    the machine."""
    deadline = time.monotonic() + limit
    while True:
        out = node.ctl("list_queues", "-p", "/", "name", "messages_ready",
                       "messages_unacknowledged", "--formatter", "json", "-q")
        row = next((row for row in json.loads(out or "[]") if row["name"] == name), None)
        if row and (row["messages_ready"], row["messages_unacknowledged"]) == (ready, unacked):
            return
        assert time.monotonic() < deadline, f"queue {name} did not settle: {row}"
        time.sleep(0.1)


def test_a_returned_old_state_keeps_the_new_one_with_a_delivery_limit(whole: Cluster) -> None:
    """On a quorum queue a reader's requeue of an old state drops a newer one stored while
    it held it on RabbitMQ 3.10.8, unless the queue has an ``x-delivery-limit`` (as ours
    have); 4.0.5 keeps the newer one either way.  replace.py, which stores while holding
    the old state, keeps the new one whatever the broker does."""
    quorum = Topology(Names("celery-results."), "celeryresults", "direct", 60.0, True,
                      queue_type="quorum")
    ours = dict(quorum.storage_queue("any").queue_arguments)
    unlimited = {key: value for key, value in ours.items() if key != "x-delivery-limit"}
    assert "x-delivery-limit" in ours and "x-max-length" in unlimited
    reader_conn, reader = raw_channel(whole.nodes[1])
    writer_conn, writer = raw_channel(whole.nodes[2])
    kept = {}
    try:
        for how, arguments in (("plain publish, no delivery limit", unlimited),
                               ("plain publish", ours), ("replace", ours)):
            name = f"{TASK_PREFIX}{uuid.uuid4()}"
            writer.queue_declare(name, durable=True, auto_delete=False, arguments=arguments)
            writer.basic_publish(amqp.Message("old"), exchange="", routing_key=name)
            held = reader.basic_get(name, no_ack=False)
            assert held.body == "old"

            def store_new(name: str = name) -> bool:
                writer.basic_publish(amqp.Message("new"), exchange="", routing_key=name)
                return True

            if how.startswith("plain publish"):
                store_new()
                # The publish and the requeue travel on two connections: only once 'new'
                # is in the queue is 'old' returned *behind* it (else 'new' just follows).
                settled(whole.nodes[2], name, ready=1, unacked=1)
                nack_requeue(reader, held.delivery_tag)
            else:
                # The reader gives 'old' back while replace waits for it.
                timer = threading.Timer(0.05, nack_requeue, (reader, held.delivery_tag))
                timer.start()
                assert replace(writer, name, store_new, grace=5.0) is True
                timer.join()
            settled(whole.nodes[2], name)
            bodies = []
            while (message := writer.basic_get(name, no_ack=True)) is not None:
                bodies.append(message.body)
            kept[how] = bodies
            writer.queue_delete(name)
    finally:
        reader_conn.close()
        writer_conn.close()
    # Measured: 3.10.8 keeps 'old' only when the queue has no delivery limit; 4.0.5, which
    # gives every quorum queue a limit (20 by default), keeps 'new'.
    major = int(whole.nodes[0].ctl("version").strip().split(".")[0])
    assert kept == {"plain publish, no delivery limit": ["old"] if major < 4 else ["new"],
                    "plain publish": ["new"], "replace": ["new"]}


def test_failover_url_whose_first_node_is_dead(whole: Cluster) -> None:
    cluster = whole
    cluster.kill(0)
    try:
        with celery_app(cluster.failover_url(0)) as app:
            task_id = str(uuid.uuid4())
            app.backend.store_result(task_id, {"stored": "via node 1"}, states.SUCCESS)
            assert app.backend.get_task_meta(task_id, cache=False)["result"] == \
                {"stored": "via node 1"}
            assert app.AsyncResult(task_id).get(timeout=10) == {"stored": "via node 1"}
            waiting = str(uuid.uuid4())
            timer = threading.Timer(0.3, app.backend.store_result,
                                    (waiting, "pushed", states.SUCCESS))
            timer.start()
            assert app.AsyncResult(waiting).get(timeout=10) == "pushed"
            timer.join()
        on = leaders(cluster, [task_id, waiting])
        assert {row["node"] for row in on.values()} <= {
            cluster.nodes[1].nodename, cluster.nodes[2].nodename}
    finally:
        cluster.start_node(0)


# -- the quorum mode's contract (full) ---------------------------------------------------------

@full
def test_quorum_mode_keeps_the_contract(whole: Cluster) -> None:
    """Re-readable by anyone, newest state only, forget, expiry, groups; waiter and chord
    queues stay classic; results spread over the nodes."""
    cluster = whole
    with quorum_app(cluster.failover_url(0)) as app, \
            quorum_app(cluster.failover_url(2)) as other:
        ids = [str(uuid.uuid4()) for _ in range(9)]
        for task_id in ids:
            for step in range(3):
                app.backend.store_result(task_id, {"step": step}, "PROGRESS")
            app.backend.store_result(task_id, f"done {task_id}", states.SUCCESS)
        for reader in (app, other, other):
            for task_id in ids:
                meta = reader.backend.get_task_meta(task_id, cache=False)
                assert (meta["status"], meta["result"]) == (states.SUCCESS, f"done {task_id}")
        rows = leaders(cluster, ids)
        assert all(row["type"] == "quorum" for row in rows.values())
        # Stored through node 0, led by several nodes (x-queue-leader-locator=balanced).
        assert len({row["node"] for row in rows.values()}) >= 2

        # A waiter's own queue is classic and exclusive, on the node it is connected to.
        waited = str(uuid.uuid4())
        timer = threading.Timer(0.3, app.backend.store_result, (waited, 7, states.SUCCESS))
        timer.start()
        assert other.AsyncResult(waited).get(timeout=10) == 7
        timer.join()
        waiter_rows = cluster.queues(prefix="celery-results.waiter.")
        assert waiter_rows and all(row["type"] == "classic" for row in waiter_rows)

        group = app.GroupResult(str(uuid.uuid4()), [app.AsyncResult(i) for i in ids[:3]])
        group.save()
        restored = other.GroupResult.restore(group.id)
        assert [child.id for child in restored.results] == ids[:3]
        assert cluster.queues(prefix=f"celery-results.group.{group.id}")[0]["type"] == "quorum"

        app.AsyncResult(ids[0]).forget()
        assert other.backend.get_task_meta(ids[0], cache=False)["status"] == states.PENDING
        assert not cluster.queues(prefix=TASK_PREFIX + ids[0])

    with quorum_app(cluster.failover_url(1), result_expires=1) as short:
        task_id = str(uuid.uuid4())
        short.backend.store_result(task_id, "soon gone", states.SUCCESS)
        assert short.backend.get_task_meta(task_id, cache=False)["result"] == "soon gone"
        time.sleep(1.5)  # the state's per-message TTL is 1 s
        assert short.backend.get_task_meta(task_id, cache=False)["status"] == states.PENDING


@full
def test_quorum_newest_state_survives_concurrent_polls(whole: Cluster) -> None:
    """Tasks finishing while three other processes' backends poll them in a loop keep
    their SUCCESS (without replace.py, 84 of 100 kept an older PROGRESS instead)."""
    cluster = whole
    wrong: List[Tuple[str, str]] = []
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(quorum_app(cluster.failover_url(0)))
        readers = [stack.enter_context(quorum_app(cluster.failover_url(i))) for i in range(3)]
        for _ in range(60):
            task_id = str(uuid.uuid4())
            writer.backend.store_result(task_id, {"step": 0}, "PROGRESS")
            stop = threading.Event()

            def poll(app: Celery, task_id: str = task_id, stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    app.backend.get_task_meta(task_id, cache=False)

            pollers = [threading.Thread(target=poll, args=(reader,)) for reader in readers]
            for poller in pollers:
                poller.start()
            for step in range(1, 4):
                writer.backend.store_result(task_id, {"step": step}, "PROGRESS")
            writer.backend.store_result(task_id, "finished", states.SUCCESS)
            stop.set()
            for poller in pollers:
                poller.join()
            meta = readers[0].backend.get_task_meta(task_id, cache=False)
            if meta["status"] != states.SUCCESS:
                wrong.append((task_id, meta["status"]))
    assert wrong == []


# -- a node killed by pid (full) ------------------------------------------------------------------

def _store_all(app: Celery, items: List[Tuple[str, Any]], errors: List[str],
               latencies: List[Tuple[float, float]]) -> None:
    for task_id, value in items:
        began = time.monotonic()
        try:
            app.backend.store_result(task_id, value, states.SUCCESS)
        except Exception as exc:
            errors.append(f"{task_id}: {exc!r}")
        latencies.append((began, time.monotonic() - began))


@full
def test_quorum_kill_a_node_while_storing_1000_and_waiting(whole: Cluster) -> None:
    """SIGKILL node 0 half-way through 1000 stores, with 10 clients waiting (deadline
    60 s): no store fails, every result reads back, every waiter gets its results."""
    cluster = whole
    ids = [str(uuid.uuid4()) for _ in range(1000)]
    expected = {task_id: {"index": index, "id": task_id} for index, task_id in enumerate(ids)}
    with quorum_app(cluster.failover_url(0)) as storer, \
            quorum_app(cluster.failover_url(0)) as waiters_on_0, \
            quorum_app(cluster.failover_url(1)) as waiters_on_1:
        # Their queues exist before the kill (a third are led by node 0): the SUCCESS
        # states below replace a PROGRESS state, as a worker's would.
        for task_id in ids:
            storer.backend.store_result(task_id, {"progress": 1}, "PROGRESS")
        led_by_0 = sum(1 for row in leaders(cluster, ids).values()
                       if row["node"] == cluster.nodes[0].nodename)
        assert led_by_0 > 100

        got: Dict[str, Any] = {}
        wait_errors: List[str] = []

        def wait(app: Celery, part: List[str]) -> None:
            try:
                results = ResultSet([app.AsyncResult(task_id) for task_id in part], app=app)
                for task_id, meta in results.iter_native(timeout=60):
                    got[task_id] = meta["result"]
            except Exception as exc:
                wait_errors.append(repr(exc))

        waiters = [threading.Thread(target=wait, args=(
            waiters_on_0 if index % 2 else waiters_on_1, ids[index::10]))
            for index in range(10)]
        for waiter in waiters:
            waiter.start()

        store_errors: List[str] = []
        latencies: List[Tuple[float, float]] = []
        items = list(expected.items())
        storers = [threading.Thread(target=_store_all, args=(
            storer, items[index::2], store_errors, latencies)) for index in range(2)]
        for thread in storers:
            thread.start()
        while len(latencies) < 500:
            time.sleep(0.01)
        killed = cluster.kill(0)
        for thread in storers:
            thread.join()
        for waiter in waiters:
            waiter.join()

        # A new result, stored and read while node 0 is still down.
        after = str(uuid.uuid4())
        storer.backend.store_result(after, "after the kill", states.SUCCESS)
        with quorum_app(cluster.failover_url(1)) as reader:
            read = {task_id: reader.backend.get_task_meta(task_id, cache=False)
                    for task_id in ids}
            assert reader.backend.get_task_meta(after, cache=False)["result"] == \
                "after the kill"

    stalls = sorted((duration, began - killed) for began, duration in latencies
                    if began + duration >= killed)
    MEASURED["quorum: longest store around the kill (s)"] = f"{stalls[-1][0]:.2f}"
    MEASURED["quorum: stores lost / failed"] = f"{len(store_errors)} of 1000"
    assert store_errors == []
    assert wait_errors == []
    assert got == {task_id: value for task_id, value in expected.items()}
    lost = [task_id for task_id, meta in read.items()
            if (meta["status"], meta["result"]) != (states.SUCCESS, expected[task_id])]
    MEASURED["quorum: results lost after the kill"] = f"{len(lost)} of 1000"
    assert lost == []


@full
def test_classic_results_on_a_killed_node_come_back_with_it(whole: Cluster) -> None:
    """Classic queues live on one node.  While it is down its results read PENDING and a
    new state for them cannot be stored; new tasks store on the other nodes.  When it
    is back, persistent results are there again and transient ones are gone."""
    cluster = whole
    with celery_app(cluster.failover_url(0)) as app, \
            celery_app(cluster.failover_url(0), result_persistent=False) as transient:
        # Connected to node 0: the queues are declared there (RabbitMQ's client-local).
        kept = {str(uuid.uuid4()): index for index in range(200)}
        for task_id, value in kept.items():
            app.backend.store_result(task_id, value, states.SUCCESS)
        gone = [str(uuid.uuid4()) for _ in range(20)]
        for task_id in gone:
            transient.backend.store_result(task_id, "transient", states.SUCCESS)
    on = leaders(cluster, [*kept, *gone])
    assert {row["node"] for row in on.values()} == {cluster.nodes[0].nodename}

    cluster.kill(0)
    try:
        with celery_app(cluster.failover_url(1)) as other:
            other.backend.retry_policy.update(max_retries=1, interval_start=0,
                                              interval_step=0.1, interval_max=0.1)
            down = {other.backend.get_task_meta(task_id, cache=False)["status"]
                    for task_id in kept}
            assert down == {states.PENDING}
            with pytest.raises(ResultStoreError, match="is down"):
                other.backend.store_result(next(iter(kept)), "again", states.SUCCESS)
            fresh = str(uuid.uuid4())
            other.backend.store_result(fresh, "elsewhere", states.SUCCESS)
            assert other.backend.get_task_meta(fresh, cache=False)["result"] == "elsewhere"
    finally:
        began = time.monotonic()
        cluster.start_node(0)
        MEASURED["classic: node 0 back after the kill (s)"] = f"{time.monotonic() - began:.1f}"

    with celery_app(cluster.failover_url(1)) as reader:
        back = {task_id: reader.backend.get_task_meta(task_id, cache=False)
                for task_id in kept}
        assert {task_id: meta["result"] for task_id, meta in back.items()} == kept
        assert {reader.backend.get_task_meta(task_id, cache=False)["status"]
                for task_id in gone} == {states.PENDING}
