"""Side-by-side figures for this result backend, three Celery backends and the AMQP floor.

    python benchmarks/run.py [--quick] [--reps N] [--out DIR] [--peers ours,redis,...]

Peers, all with the same RabbitMQ broker for task messages (each peer in its own
fresh vhost, deleted at the end; Redis results in db 15, flushed at start and end):

* ``ours``  this package, ``result_backend = amqp://guest:guest@127.0.0.1:5672/<vhost>``
  (another broker with the tests' CAR_TEST_* variables: ``eval "$(scripts/rabbitmq4 env)"``)
* ``redis`` Celery's ``redis://127.0.0.1:6379/15``
* ``rpc``   Celery's ``rpc://``
* ``cab``   the ``celery-amqp-backend`` package (``celery_amqp_backend.AMQPBackend://``)
* ``floor`` py-amqp alone: what the broker does per operation, without Celery

Each measurement runs ``--reps`` times; the tables show the median and (min..max).
Outputs: two printed tables (raw figures, ratios ours / peer and ours / floor), a JSON
file with every sample, and a log-log PNG of group(N).get() wall time against N.
The exit status is 0 only if every figure of ``ours`` was measured.

This is a measurement script: it asserts nothing about timings.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import amqp
import redis
from celery import Celery, chord, group
from celery.app.task import Context

from celery_amqp_results.channel import nack_requeue

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_tasks import make_app  # noqa: E402  (needs HERE on sys.path)
from harness import (  # noqa: E402  (needs HERE on sys.path)
    RABBIT_HOST,
    amqp_url,
    close_app,
    delete_vhost,
    rabbitmqctl,
    start_worker,
    stop_worker,
    wait_for_ping,
)
from server_cpu import ServerCpu  # noqa: E402  (needs HERE on sys.path)

REDIS_DB = 15
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"

#: The queue arguments this project declares for every result queue (1 day expiry,
#: Celery's default result_expires), used by the raw floors.
RESULT_EXPIRES_MS = 86_400_000
QUEUE_ARGUMENTS = {"x-max-length": 1, "x-overflow": "drop-head", "x-expires": RESULT_EXPIRES_MS}

#: A body the size of a stored SUCCESS state, for the publish floor.
STATE_BODY = json.dumps({
    "status": "SUCCESS", "result": 2, "traceback": None, "children": [],
    "date_done": "2024-01-01T00:00:00.000000+00:00",
    "task_id": "00000000-0000-0000-0000-000000000000"}).encode()


#: The servers' CPU clocks (server_cpu.py), found once by main(); None: not sampled.
SERVER_CPU: Optional[ServerCpu] = None

#: Where each figure keeps its servers' CPU seconds per 1000 results, one dict per rep.
CPU_EXTRA = "server_cpu_s_per_1000"


# -- plan ----------------------------------------------------------------------------------


@dataclass
class Plan:
    """How much to measure: repetitions, sizes and the caps on each rate figure."""

    reps: int
    group_sizes: List[int]
    roundtrip_calls: int
    chords_per_rep: int
    chord_width: int
    #: A second, wide chord per rep: its delay shows the final read of the chord log.
    wide_chord_width: int
    ops_cap: int
    seconds_cap: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        if args.quick:
            plan = cls(reps=1, group_sizes=[100, 1000], roundtrip_calls=100,
                       chords_per_rep=3, chord_width=20, wide_chord_width=1000,
                       ops_cap=1000, seconds_cap=2.0)
        else:
            plan = cls(reps=3, group_sizes=[100, 1000, 5000], roundtrip_calls=500,
                       chords_per_rep=5, chord_width=20, wide_chord_width=1000,
                       ops_cap=2000, seconds_cap=3.0)
        if args.reps is not None:
            plan.reps = args.reps
        return plan

    def describe(self) -> List[str]:
        return [
            f"{self.reps} rep(s) per figure; cells are median (min..max) over reps",
            f"rate figures run each rep until {self.ops_cap} operations or "
            f"{self.seconds_cap:g} s, whichever comes first",
            "reads/s reads once each result that rep's stores/s loop stored "
            "(from a second client)",
            f"group(N).get(): N = {', '.join(map(str, self.group_sizes))}, from apply_async "
            f"to get() returning; worker: prefork, concurrency 2",
            f"round trip: add.delay(1, 1).get(), {self.roundtrip_calls} calls per rep",
            f"chord delay: {self.chords_per_rep} chords of {self.chord_width} header tasks "
            f"per rep, median per rep; body start minus the last header's own time.time()",
            f"wide chord delay: 1 chord of {self.wide_chord_width} header tasks per rep",
        ]


# -- figures and their results -------------------------------------------------------------


@dataclass(frozen=True)
class FigureSpec:
    """One reported figure: its key, label, unit and which direction is better."""

    key: str
    label: str
    unit: str
    higher_is_better: bool


def figure_specs(plan: Plan) -> List[FigureSpec]:
    specs = [
        FigureSpec("stores_per_s", "stores/s (no worker)", "1/s", True),
        FigureSpec("reads_per_s", "reads/s, distinct ids", "1/s", True),
        FigureSpec("polls_per_s", "polls/s, one finished id", "1/s", True),
    ]
    specs += [FigureSpec(f"group_{n}_s", f"group({n}).get() wall", "s", False)
              for n in plan.group_sizes]
    specs += [
        FigureSpec("roundtrip_p50_ms", "round trip p50", "ms", False),
        FigureSpec("roundtrip_p99_ms", "round trip p99", "ms", False),
        FigureSpec("chord_delay_ms", f"chord({plan.chord_width}) completion delay", "ms",
                   False),
        FigureSpec("wide_chord_delay_ms", f"chord({plan.wide_chord_width}) completion delay",
                   "ms", False),
    ]
    return specs


FLOOR_SPECS = [
    FigureSpec("declares_per_s", "durable queue declares/s (our args)", "1/s", True),
    FigureSpec("publish_confirms_per_s", "publish + confirm/s (existing queue)", "1/s", True),
    FigureSpec("get_requeues_per_s", "basic.get + requeue/s", "1/s", True),
    FigureSpec("store_sequence_per_s", "store sequence/s (persistent)", "1/s", True),
    FigureSpec("store_sequence_transient_per_s", "store sequence/s (transient msg)", "1/s",
               True),
]

#: Ratios of ours to a floor: (our figure, floor figure, label).
FLOOR_RATIOS = [
    ("stores_per_s", "declares_per_s", "stores/s / queue declares/s"),
    ("stores_per_s", "store_sequence_per_s", "stores/s / store sequence/s (persistent)"),
    ("reads_per_s", "get_requeues_per_s", "reads/s / basic.get+requeue/s"),
    ("polls_per_s", "get_requeues_per_s", "polls/s / basic.get+requeue/s"),
]

FLOOR_NOTES = [
    "store sequence = what one first store of this backend does on the broker: "
    "declare a new durable queue (our args), publish the state into it (persistent or "
    "transient, mandatory, TTL) and wait for the confirm, publish it again on a direct "
    "exchange with nothing bound (the announcement) and wait for that confirm",
    "publish + confirm/s goes to one existing queue; the first persistent message into a "
    "NEW durable queue is much slower (see the phase times below)",
]


@dataclass
class Outcome:
    """The samples of one figure for one peer, or why it has none."""

    samples: List[float] = field(default_factory=list)
    error: Optional[str] = None
    na: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.samples) if self.samples and not self.error else None

    def as_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"samples": self.samples}
        if self.samples:
            out.update(median=statistics.median(self.samples),
                       min=min(self.samples), max=max(self.samples))
        if self.error:
            out["error"] = self.error
        if self.na:
            out["na"] = self.na
        if self.extra:
            out["extra"] = self.extra
        return out


Results = Dict[str, Outcome]


def short_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"error: {type(exc).__name__}: {text[:70]}"


# -- peers ---------------------------------------------------------------------------------


def _meta_read(app: Celery, task_id: str) -> Dict[str, Any]:
    """Read a stored result from the broker/store, bypassing the backend's local cache."""
    return app.backend.get_task_meta(task_id, cache=False)


def _cab_consume(app: Celery, task_id: str) -> Dict[str, Any]:
    """celery-amqp-backend's read: AsyncResult.get() consumes the result (read-once)."""
    value = app.AsyncResult(task_id).get(timeout=30)
    return {"status": "SUCCESS", "result": value}


def _cab_peek(app: Celery, task_id: str) -> Dict[str, Any]:
    """celery-amqp-backend's get_task_meta: declare + bind + basic.get + requeue."""
    return app.backend.get_task_meta(task_id)


@dataclass
class Peer:
    """One result backend configuration, and how each figure applies to it."""

    key: str
    label: str
    backend_url: Callable[[str], str]
    read: Optional[Callable[[Celery, str], Dict[str, Any]]]
    poll: Optional[Callable[[Celery, str], Dict[str, Any]]]
    rpc_store: bool = False
    chords: bool = True
    conf: Dict[str, Any] = field(default_factory=dict)
    na: Dict[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    #: Measured unless --peers says otherwise (the variants are opt-in).
    default: bool = True
    #: Run before the peer is measured; returns what undoes it (otel variants).
    setup: Optional[Callable[[], Callable[[], None]]] = None
    #: False: only the figures without a worker (stores, reads, polls) are measured.
    worker: bool = True


def hide_opentelemetry() -> Callable[[], None]:
    """As if opentelemetry-api were not installed: telemetry.py's imports are None."""
    from celery_amqp_results import telemetry
    saved = telemetry.otel_trace, telemetry.otel_metrics, telemetry.otel_propagate
    telemetry.otel_trace = telemetry.otel_metrics = telemetry.otel_propagate = None

    def undo() -> None:
        telemetry.otel_trace, telemetry.otel_metrics, telemetry.otel_propagate = saved
    return undo


def set_opentelemetry_sdk() -> Callable[[], None]:
    """The SDK's tracer and meter providers, as an instrumented application sets them:
    spans batched to an exporter that drops them, metrics kept by an in-memory reader.
    Providers are set once per process: this peer is measured last."""
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Dropping(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Dropping()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    return lambda: None



PEERS = [
    Peer("ours", "this backend (amqp://)", lambda vhost: amqp_url(vhost),
         read=_meta_read, poll=_meta_read,
         notes=["store = declare the task's queue + publish (confirmed) + announce "
                "(confirmed); read/poll = get_task_meta(id, cache=False) = basic.get "
                "+ requeue"]),
    Peer("redis", "redis:// (db 15)", lambda vhost: REDIS_URL,
         read=_meta_read, poll=_meta_read,
         notes=["read/poll = get_task_meta(id, cache=False) = one GET"]),
    Peer("rpc", "rpc://", lambda vhost: "rpc://", read=None, poll=None,
         rpc_store=True, chords=False,
         na={"reads_per_s": "n/a: a result goes once, to the caller's reply queue",
             "polls_per_s": "n/a: a result goes once, to the caller's reply queue",
             "chord_delay_ms": "n/a: rpc:// does not support chords",
             "wide_chord_delay_ms": "n/a: rpc:// does not support chords"},
         notes=["stores/s: with a request whose reply_to is a client's queue, as a "
                "worker stores: one unconfirmed publish"]),
    Peer("cab", "celery-amqp-backend 1.2", lambda vhost: "celery_amqp_backend.AMQPBackend://",
         read=_cab_consume, poll=_cab_peek,
         notes=["read-once: reads/s = AsyncResult(id).get(), which consumes the result "
                "(a second read finds nothing)",
                "polls/s = its get_task_meta(id) (declare + bind + basic.get + requeue); "
                "it re-reads only until some get() consumes the result",
                "stores are not publisher-confirmed (plain publish on the broker pool)"]),
    Peer("ours-transient", "this backend, result_persistent=False",
         lambda vhost: amqp_url(vhost), read=_meta_read, poll=_meta_read,
         conf={"result_persistent": False}, default=False,
         notes=["opt-in variant of ours: states published transient (delivery mode 1); "
                "the queues stay durable"]),
    Peer("ours-no-otel", "this backend, opentelemetry-api hidden",
         lambda vhost: amqp_url(vhost), read=_meta_read, poll=_meta_read, default=False,
         setup=hide_opentelemetry, worker=False,
         notes=["opt-in variant of ours: as if opentelemetry-api were not installed "
                "(telemetry.py's imports set to None); beside ours (API installed, no "
                "provider set) it shows what the API costs when nobody traces"]),
    # Last: the SDK's providers cannot be unset, every peer after it would be traced.
    Peer("ours-otel-sdk", "this backend, OpenTelemetry SDK tracing",
         lambda vhost: amqp_url(vhost), read=_meta_read, poll=_meta_read, default=False,
         setup=set_opentelemetry_sdk, worker=False,
         notes=["opt-in variant of ours: the SDK's tracer provider (batch processor, "
                "exporter dropping spans) and meter provider set: a span per store and "
                "read, metrics recorded; always measured after every other peer"]),
]


# -- services: vhosts, redis db, worker ----------------------------------------------------


class Vhosts:
    """Fresh vhosts for this run; every one is deleted by ``delete_all``."""

    def __init__(self) -> None:
        self.run_id = uuid.uuid4().hex[:8]
        self.created: List[str] = []

    def new(self, purpose: str) -> str:
        name = f"car-bench-{self.run_id}-{purpose}"
        rabbitmqctl("add_vhost", name)
        self.created.append(name)
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return name

    def delete(self, name: str) -> None:
        if name in self.created:
            self.created.remove(name)
            delete_vhost(name)

    def delete_all(self) -> None:
        for name in list(self.created):
            self.delete(name)


def queue_count(vhost: str) -> Optional[int]:
    """How many queues ``vhost`` holds (what a peer leaves behind on the broker)."""
    try:
        out = rabbitmqctl("list_queues", "-q", "-p", vhost, "name", timeout=300)
    except (subprocess.SubprocessError, OSError):
        return None
    return sum(1 for line in out.splitlines() if line.strip() and line.strip() != "name")


def flush_redis() -> None:
    redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB).flushdb()


@contextmanager
def running_worker(peer: Peer, broker: str, backend: str, log_path: Path,
                   app: Celery) -> Iterator[subprocess.Popen]:
    """A real ``celery worker`` (prefork, 2 processes) for ``peer``; stopped on exit."""
    proc = start_worker(broker, backend, log_path, f"bench-{peer.key}-{os.getpid()}@%h",
                        peer.conf)
    try:
        wait_for_ping(app, proc)
        warm_up(app)
        yield proc
    finally:
        stop_worker(proc)


def warm_up(app: Celery) -> None:
    """A few tasks and a group of 20 (pool started, connections open) before timing."""
    add = app.tasks["bench.add"]
    for _ in range(5):
        add.delay(1, 1).get(timeout=30)
    group(add.s(i, i) for i in range(20)).apply_async().get(timeout=30)


# -- timing helpers ------------------------------------------------------------------------


def capped_rate(operation: Callable[[Any], Any], items: Iterator[Any],
                plan: Plan) -> Tuple[float, int]:
    """Run ``operation`` over ``items`` until ops_cap operations or seconds_cap seconds."""
    done = 0
    started = time.perf_counter()
    elapsed = 0.0
    for item in items:
        operation(item)
        done += 1
        elapsed = time.perf_counter() - started
        if done >= plan.ops_cap or elapsed >= plan.seconds_cap:
            break
    if done == 0:
        raise RuntimeError("no operation ran")
    return done / elapsed, done


def new_ids() -> Iterator[str]:
    while True:
        yield str(uuid.uuid4())


def percentile(values: List[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# -- the raw floors (py-amqp alone) --------------------------------------------------------


@contextmanager
def amqp_channel(vhost: str, confirm: bool = False) -> Iterator[Any]:
    conn = amqp.Connection(host=RABBIT_HOST, userid="guest", password="guest",
                           virtual_host=vhost, confirm_publish=confirm)
    conn.connect()
    try:
        yield conn.channel()
    finally:
        conn.close()


def floor_declares(vhost: str, plan: Plan) -> Tuple[float, Dict[str, float]]:
    """Durable queue declarations/s, each a new queue with this project's arguments.

    What every first store of a task costs this backend at the least: one
    synchronous queue.declare (RabbitMQ creates a queue process and records it).
    """
    with amqp_channel(vhost) as channel:
        def declare(name: str) -> None:
            channel.queue_declare(queue=f"floor.q.{name}", durable=True, auto_delete=False,
                                  arguments=QUEUE_ARGUMENTS)
        declare("warm-up")
        rate, _ = capped_rate(declare, new_ids(), plan)
    return rate, {}


def floor_publish_confirms(vhost: str, plan: Plan) -> Tuple[float, Dict[str, float]]:
    """Persistent, mandatory publishes/s, each waiting for its publisher confirm.

    The same message properties as a stored state, to one queue with this
    project's arguments (it keeps only the newest message).
    """
    with amqp_channel(vhost, confirm=True) as channel:
        queue = f"floor.publish.{uuid.uuid4().hex}"
        channel.queue_declare(queue=queue, durable=True, auto_delete=False,
                              arguments=QUEUE_ARGUMENTS)

        def publish(_: Any) -> None:
            channel.basic_publish(
                amqp.Message(STATE_BODY, content_type="application/json",
                             content_encoding="utf-8", delivery_mode=2,
                             expiration=str(RESULT_EXPIRES_MS)),
                exchange="", routing_key=queue, mandatory=True)
        publish(None)
        rate, _ = capped_rate(publish, iter(int, 1), plan)
    return rate, {}


def floor_get_requeues(vhost: str, plan: Plan) -> Tuple[float, Dict[str, float]]:
    """basic.get + nack(requeue)/s on one queue holding one message: the cost of one peek."""
    with amqp_channel(vhost) as channel:
        queue = f"floor.get.{uuid.uuid4().hex}"
        channel.queue_declare(queue=queue, durable=True, auto_delete=False,
                              arguments=QUEUE_ARGUMENTS)
        channel.basic_publish(amqp.Message(STATE_BODY, delivery_mode=2),
                              exchange="", routing_key=queue)

        def get_requeue(_: Any) -> None:
            message = channel.basic_get(queue=queue, no_ack=False)
            if message is None:
                raise RuntimeError("the floor queue was empty")
            # basic.nack with requeue, as the backend's peek does (read.py); py-amqp's
            # basic.reject measured bimodal here (2 600 or 5 400/s between runs).
            nack_requeue(channel, message.delivery_tag)
        get_requeue(None)
        rate, _ = capped_rate(get_requeue, iter(int, 1), plan)
    return rate, {}


def floor_store_sequence(vhost: str, plan: Plan,
                         persistent: bool = True) -> Tuple[float, Dict[str, float]]:
    """Store sequences/s: the broker work of one first store of this backend, py-amqp alone.

    Declare a new durable queue with our arguments; publish the state into it
    (mandatory, with a TTL) and wait for the confirm; publish it again on a
    direct exchange with no queue bound (the announcement) and wait for that
    confirm.  Also returns the mean time of each phase, in ms (they add up to 1/rate,
    give or take the loop's own overhead).
    """
    phases: Dict[str, List[float]] = {"declare_ms": [], "first_publish_ms": [],
                                      "announce_ms": []}
    properties = {"content_type": "application/json", "content_encoding": "utf-8",
                  "delivery_mode": 2 if persistent else 1,
                  "expiration": str(RESULT_EXPIRES_MS)}
    with amqp_channel(vhost, confirm=True) as channel:
        exchange = "floor.announce"
        channel.exchange_declare(exchange, "direct", durable=True, auto_delete=False)

        def store(name: str) -> None:
            queue = f"floor.task.{name}"
            started = time.perf_counter()
            channel.queue_declare(queue=queue, durable=True, auto_delete=False,
                                  arguments=QUEUE_ARGUMENTS)
            declared = time.perf_counter()
            channel.basic_publish(amqp.Message(STATE_BODY, **properties), exchange="",
                                  routing_key=queue, mandatory=True)
            published = time.perf_counter()
            channel.basic_publish(amqp.Message(STATE_BODY, **properties),
                                  exchange=exchange, routing_key=name)
            announced = time.perf_counter()
            phases["declare_ms"].append((declared - started) * 1000)
            phases["first_publish_ms"].append((published - declared) * 1000)
            phases["announce_ms"].append((announced - published) * 1000)

        store(f"warm-up-{uuid.uuid4().hex}")
        for times in phases.values():
            times.clear()
        rate, _ = capped_rate(store, new_ids(), plan)
    return rate, {key: statistics.mean(times) for key, times in phases.items()}


FLOOR_FUNCTIONS: Dict[str, Callable[[str, Plan], Tuple[float, Dict[str, float]]]] = {
    "declares_per_s": floor_declares,
    "publish_confirms_per_s": floor_publish_confirms,
    "get_requeues_per_s": floor_get_requeues,
    "store_sequence_per_s": floor_store_sequence,
    "store_sequence_transient_per_s": partial(floor_store_sequence, persistent=False),
}


def measure_floors(vhosts: Vhosts, plan: Plan) -> Results:
    """Every raw floor, ``plan.reps`` times, in a vhost of their own."""
    results: Results = {spec.key: Outcome() for spec in FLOOR_SPECS}
    vhost = vhosts.new("floor")
    try:
        for rep in range(plan.reps):
            for key, function in FLOOR_FUNCTIONS.items():
                if results[key].error:
                    continue
                try:
                    value, extra = function(vhost, plan)
                except Exception as exc:
                    results[key].error = short_error(exc)
                    continue
                results[key].samples.append(value)
                for name, item in extra.items():
                    results[key].extra.setdefault(name, []).append(item)
                progress("floor", key, rep, plan, value)
    finally:
        vhosts.delete(vhost)
    return results


# -- figures without a worker --------------------------------------------------------------


def stores_per_second(peer: Peer, app: Celery, plan: Plan) -> Tuple[float, List[str]]:
    """store_result(new_id, value, "SUCCESS")/s, each for a new task id, no worker running.

    For this backend each such store creates its task's queue, so this is the cost
    of a task's first (usually only) result.  Returns the rate and the stored ids.
    """
    backend = app.backend
    request = None
    if peer.rpc_store:
        # rpc:// stores only for a request with a reply queue, as a worker has.
        request = Context(reply_to=backend.oid, correlation_id=None)
        with app.producer_or_acquire() as producer:
            backend.on_task_call(producer, "declare-the-reply-queue")
    stored: List[str] = []

    def store(task_id: str) -> None:
        backend.store_result(task_id, 2, "SUCCESS", request=request)
        stored.append(task_id)

    store(str(uuid.uuid4()))  # opens the connection, untimed
    stored.clear()
    rate, _ = capped_rate(store, new_ids(), plan)
    if peer.rpc_store:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(backend.oid)
    return rate, stored


def reads_per_second(peer: Peer, app: Celery, stored: List[str],
                     plan: Plan) -> Tuple[float, int]:
    """Reads/s of distinct stored results, each read once, by a client that did not store them.

    For the read-once peer (cab) a read consumes the result; for the others it
    leaves it in place.  The first id is read untimed to open the connection.
    Returns the rate and how many reads were timed.
    """
    assert peer.read is not None
    if len(stored) < 2:
        raise RuntimeError("fewer than 2 results were stored")
    read = peer.read
    wrong = 0

    def read_one(task_id: str) -> None:
        nonlocal wrong
        if read(app, task_id)["status"] != "SUCCESS":
            wrong += 1
    read_one(stored[0])
    rate, done = capped_rate(read_one, iter(stored[1:]), plan)
    if wrong:
        raise RuntimeError(f"{wrong} reads did not find the stored SUCCESS")
    return rate, done


def polls_per_second(peer: Peer, app: Celery, plan: Plan) -> Tuple[float, int]:
    """Reads/s of the same finished result, again and again (a client polling a task).

    Returns the rate and how many polls were timed.
    """
    assert peer.poll is not None
    task_id = str(uuid.uuid4())
    app.backend.store_result(task_id, 2, "SUCCESS")
    poll = peer.poll
    wrong = 0

    def poll_once(_: Any) -> None:
        nonlocal wrong
        if poll(app, task_id)["status"] != "SUCCESS":
            wrong += 1
    poll_once(None)
    rate, done = capped_rate(poll_once, iter(int, 1), plan)
    if wrong:
        raise RuntimeError(f"{wrong} polls did not find the stored SUCCESS")
    return rate, done


#: The figures measure_without_worker takes.
WITHOUT_WORKER = ("stores_per_s", "reads_per_s", "polls_per_s")


def measure_without_worker(peer: Peer, broker: str, backend: str, plan: Plan,
                           results: Results) -> None:
    """stores/s, then reads/s of what was stored, then polls/s; each rep on fresh apps."""
    for rep in range(plan.reps):
        stored: List[str] = []
        writer = make_app(broker, backend, peer.conf)
        try:
            before = cpu_sample()
            rate, stored = stores_per_second(peer, writer, plan)
            # + 1: the untimed first store, which opened the connection
            note_cpu(results, ["stores_per_s"], before, len(stored) + 1)
            record(results, peer, "stores_per_s", rep, plan, rate, ops=len(stored))
        except Exception as exc:
            fail(results, peer, "stores_per_s", exc)
        finally:
            close_app(writer)
        # Each reader's untimed operations: the first read; the store and first poll.
        readers: Dict[str, Tuple[Callable[[Celery], Tuple[float, int]], int]] = {
            "reads_per_s": (partial(reads_per_second, peer, stored=stored, plan=plan), 1),
            "polls_per_s": (partial(polls_per_second, peer, plan=plan), 2),
        }
        for key, (run, untimed) in readers.items():
            if key in peer.na or results[key].error:
                continue
            reader = make_app(broker, backend, peer.conf)
            try:
                before = cpu_sample()
                rate, done = run(reader)
                note_cpu(results, [key], before, done + untimed)
                record(results, peer, key, rep, plan, rate, ops=done)
            except Exception as exc:
                fail(results, peer, key, exc)
            finally:
                close_app(reader)


# -- figures with a worker -----------------------------------------------------------------


def group_wall_time(app: Celery, size: int) -> float:
    """Seconds from group(add x size).apply_async() to .get() returning every result.

    Includes sending the task messages, the worker running and storing the
    results, and the client collecting them: how a join scales with N.
    """
    add = app.tasks["bench.add"]
    started = time.perf_counter()
    result = group(add.s(i, i) for i in range(size)).apply_async()
    values = result.get(timeout=max(120.0, size * 0.2))
    elapsed = time.perf_counter() - started
    if values != [2 * i for i in range(size)]:
        raise RuntimeError("group returned wrong values")
    return elapsed


def round_trip(app: Celery, calls: int) -> Tuple[float, float]:
    """add.delay(1, 1).get() latency, p50 and p99 in ms, over ``calls`` sequential calls."""
    add = app.tasks["bench.add"]
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        if add.delay(1, 1).get(timeout=30) != 2:
            raise RuntimeError("add returned a wrong value")
        latencies.append((time.perf_counter() - started) * 1000)
    return percentile(latencies, 0.50), percentile(latencies, 0.99)


def chord_delay(app: Celery, chords: int, width: int) -> Tuple[float, List[float]]:
    """ms from the last header task's completion to the body's start (median, all).

    The header tasks return their own time.time(); the body records its start.
    This is the time a backend takes to notice a chord is complete and start the
    body (Celery's chord_unlock polling for backends without native chords).
    """
    stamp, body = app.tasks["bench.stamp"], app.tasks["bench.chord_body"]
    delays = []
    for _ in range(chords):
        result = chord(stamp.s() for _ in range(width))(body.s())
        out = result.get(timeout=120)
        delays.append((out["body_started"] - out["last_header"]) * 1000)
    return statistics.median(delays), delays


def measure_with_worker(peer: Peer, broker: str, backend: str, plan: Plan,
                        results: Results, log_path: Path) -> None:
    """group(N) wall times, round trip and chord delay, with one worker for all reps."""
    worker_keys = [f"group_{n}_s" for n in plan.group_sizes] + [
        "roundtrip_p50_ms", "roundtrip_p99_ms", "chord_delay_ms", "wide_chord_delay_ms"]
    app = make_app(broker, backend, peer.conf)
    try:
        with running_worker(peer, broker, backend, log_path, app):
            for rep in range(plan.reps):
                for size in plan.group_sizes:
                    key = f"group_{size}_s"
                    if not results[key].error:
                        before = cpu_sample()
                        attempt(results, peer, key, rep, plan,
                                lambda size=size: group_wall_time(app, size))
                        if not results[key].error:
                            note_cpu(results, [key], before, size)
                if not results["roundtrip_p50_ms"].error:
                    try:
                        before = cpu_sample()
                        p50, p99 = round_trip(app, plan.roundtrip_calls)
                        note_cpu(results, ["roundtrip_p50_ms", "roundtrip_p99_ms"], before,
                                 plan.roundtrip_calls)
                        record(results, peer, "roundtrip_p50_ms", rep, plan, p50)
                        record(results, peer, "roundtrip_p99_ms", rep, plan, p99)
                    except Exception as exc:
                        fail(results, peer, "roundtrip_p50_ms", exc)
                        fail(results, peer, "roundtrip_p99_ms", exc)
                for key, count, width in (
                        ("chord_delay_ms", plan.chords_per_rep, plan.chord_width),
                        ("wide_chord_delay_ms", 1, plan.wide_chord_width)):
                    if not peer.chords or results[key].error:
                        continue
                    try:
                        before = cpu_sample()
                        median, delays = chord_delay(app, count, width)
                        # each chord: its header results and the body's
                        note_cpu(results, [key], before, count * (width + 1))
                        record(results, peer, key, rep, plan, median)
                        results[key].extra.setdefault("all_ms", []).extend(delays)
                    except Exception as exc:
                        fail(results, peer, key, exc)
    except Exception as exc:  # the worker did not start (or stop): every figure left fails
        for key in worker_keys:
            if key not in peer.na and not results[key].samples and not results[key].error:
                fail(results, peer, key, exc)
    finally:
        close_app(app)


def cpu_sample() -> Dict[str, float]:
    """The servers' CPU seconds so far ({} when they are not sampled)."""
    return SERVER_CPU.sample() if SERVER_CPU is not None else {}


def note_cpu(results: Results, keys: List[str], before: Dict[str, float],
             count: int) -> None:
    """Keep the servers' CPU seconds since ``before`` per 1000 of ``count`` results."""
    if SERVER_CPU is None or not before:
        return
    spent = ServerCpu.per_1000(before, SERVER_CPU.sample(), count)
    for key in keys:
        results[key].extra.setdefault(CPU_EXTRA, []).append(spent)


def attempt(results: Results, peer: Peer, key: str, rep: int, plan: Plan,
            run: Callable[[], float]) -> None:
    try:
        record(results, peer, key, rep, plan, run())
    except Exception as exc:
        fail(results, peer, key, exc)


def record(results: Results, peer: Peer, key: str, rep: int, plan: Plan, value: float,
           **extra: Any) -> None:
    results[key].samples.append(value)
    for name, item in extra.items():
        results[key].extra.setdefault(name, []).append(item)
    progress(peer.key, key, rep, plan, value)


def fail(results: Results, peer: Peer, key: str, exc: BaseException) -> None:
    results[key].error = short_error(exc)
    print(f"[{peer.key}] {key}: {results[key].error}", flush=True)
    log = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    results[key].extra["traceback"] = log


def progress(who: str, key: str, rep: int, plan: Plan, value: float) -> None:
    print(f"[{who}] {key} rep {rep + 1}/{plan.reps}: {fmt(value)}", flush=True)


def measure_peer(peer: Peer, vhosts: Vhosts, plan: Plan, out_dir: Path, stamp: str,
                 specs: List[FigureSpec]) -> Tuple[Results, Dict[str, Any]]:
    """Every figure for one peer, in a vhost of its own (deleted afterwards)."""
    results: Results = {spec.key: Outcome(na=peer.na.get(spec.key)) for spec in specs}
    if not peer.worker:
        for key in set(results) - set(WITHOUT_WORKER):
            results[key].na = "n/a: this variant is measured without a worker"
    info: Dict[str, Any] = {"label": peer.label, "notes": peer.notes}
    vhost = vhosts.new(peer.key)
    broker = amqp_url(vhost)
    backend = peer.backend_url(vhost)
    info.update(vhost=vhost, backend=backend)
    log_path = out_dir / f"worker-{peer.key}-{stamp}.log"
    info["worker_log"] = str(log_path)
    started = time.monotonic()
    undo = peer.setup() if peer.setup is not None else None
    try:
        measure_without_worker(peer, broker, backend, plan, results)
        if peer.worker:
            measure_with_worker(peer, broker, backend, plan, results, log_path)
        info["queues_left_on_broker"] = queue_count(vhost)
    except Exception as exc:  # something outside any one figure: mark what is missing
        for outcome in results.values():
            if not outcome.na and not outcome.samples and not outcome.error:
                outcome.error = short_error(exc)
    finally:
        if undo is not None:
            undo()
        info["seconds"] = round(time.monotonic() - started, 1)
        vhosts.delete(vhost)
    return results, info


# -- ratios --------------------------------------------------------------------------------


def compute_ratios(all_results: Dict[str, Results], floors: Results,
                   specs: List[FigureSpec]) -> Dict[str, Dict[str, Optional[float]]]:
    """ours / peer for every figure and peer; ours / floor for the figures with a floor."""
    ours = all_results.get("ours", {})
    ratios: Dict[str, Dict[str, Optional[float]]] = {}
    for spec in specs:
        mine = ours[spec.key].median if spec.key in ours else None
        row: Dict[str, Optional[float]] = {}
        for key, results in all_results.items():
            if key == "ours":
                continue
            theirs = results[spec.key].median
            row[key] = mine / theirs if mine is not None and theirs else None
        ratios[spec.key] = row
    for mine_key, floor_key, label in FLOOR_RATIOS:
        mine = ours[mine_key].median if mine_key in ours else None
        floor = floors[floor_key].median
        ratios[label] = {"floor": mine / floor if mine is not None and floor else None}
    return ratios


# -- output --------------------------------------------------------------------------------


def fmt(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def cell(outcome: Outcome) -> str:
    if outcome.na:
        return outcome.na.split(":")[0]
    if outcome.error:  # shortened for the table; the JSON has it whole
        return outcome.error if len(outcome.error) <= 44 else outcome.error[:43] + "…"
    if not outcome.samples:
        return "-"
    text = fmt(statistics.median(outcome.samples))
    if len(outcome.samples) > 1:
        text += f" ({fmt(min(outcome.samples))}..{fmt(max(outcome.samples))})"
    return text


def print_table(title: str, header: List[str], rows: List[List[str]]) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    line = "  ".join(text.ljust(width) for text, width in zip(header, widths))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(text.ljust(width) for text, width in zip(row, widths)))


def print_report(plan: Plan, specs: List[FigureSpec], peers: List[Peer],
                 all_results: Dict[str, Results], floors: Results,
                 ratios: Dict[str, Dict[str, Optional[float]]],
                 peer_info: Dict[str, Dict[str, Any]]) -> None:
    print("\n" + "\n".join(f"  {line}" for line in plan.describe()))
    header = ["figure", "unit", *[peer.key for peer in peers]]
    rows = [[spec.label, spec.unit, *[cell(all_results[peer.key][spec.key]) for peer in peers]]
            for spec in specs]
    print_table("RAW FIGURES (median (min..max) over reps)", header, rows)
    cpu_rows = [[spec.label, "s/1000", *[cpu_cell(all_results[peer.key][spec.key])
                                         for peer in peers]] for spec in specs]
    print_table("SERVER CPU per 1000 results of each figure (median over reps): the RabbitMQ "
                "node's process, + redis-server's where it spent >= 0.01 s", header, cpu_rows)
    floor_rows = [[spec.label, spec.unit, cell(floors[spec.key])] for spec in FLOOR_SPECS]
    print_table("RAW FLOORS (py-amqp alone, one connection, one operation at a time)",
                ["floor", "unit", "value"], floor_rows)
    for key in ("store_sequence_per_s", "store_sequence_transient_per_s"):
        phases = floors[key].extra
        if phases:
            print(f"  {key} phases, mean ms (median over reps): " + ", ".join(
                f"{name} {fmt(statistics.median(values))}" for name, values in phases.items()))
    others = [peer.key for peer in peers if peer.key != "ours"]
    if "ours" in all_results:
        rows = []
        for spec in specs:
            better = "higher" if spec.higher_is_better else "lower"
            rows.append([spec.label, f"{better} is better",
                         *[ratio_cell(ratios[spec.key].get(key),
                                      all_results[key][spec.key]) for key in others]])
        print_table("RATIOS ours / peer (medians; for a rate > 1 means ours is faster, "
                    "for a time > 1 means ours is slower)",
                    ["figure", "direction", *[f"ours/{key}" for key in others]], rows)
        floor_rows = [[label, fmt(ratios[label]["floor"])] for _, _, label in FLOOR_RATIOS]
        print_table("RATIOS ours / raw floor (1.0 = as fast as the broker allows "
                    "one client, one operation at a time)", ["ratio", "value"], floor_rows)
    print("\nNotes:")
    for note in FLOOR_NOTES:
        print(f"  floor: {note}")
    for peer in peers:
        for note in peer.notes:
            print(f"  {peer.key}: {note}")
        for key, reason in peer.na.items():
            print(f"  {peer.key}: {key}: {reason}")
        print(f"  {peer.key}: {measured_counts(all_results[peer.key], peer_info[peer.key])}")


def measured_counts(results: Results, info: Dict[str, Any]) -> str:
    """Operations timed per rep for the capped rate figures, and queues left behind."""
    parts = []
    for key in ("stores_per_s", "reads_per_s", "polls_per_s"):
        ops = results[key].extra.get("ops")
        if ops:
            parts.append(f"{key.split('_')[0]} {'/'.join(map(str, ops))}")
    text = "ops timed per rep: " + (", ".join(parts) or "none")
    if info.get("queues_left_on_broker") is not None:
        text += f"; queues in its vhost at the end: {info['queues_left_on_broker']}"
    return text + f"; {info.get('seconds')} s in all"


def cpu_cell(outcome: Outcome) -> str:
    """The RabbitMQ node's CPU s per 1000 results, and redis-server's if it did work."""
    spent = outcome.extra.get(CPU_EXTRA)
    if outcome.na or outcome.error or not spent:
        return "-"
    text = ""
    for name, prefix in (("rabbitmq", ""), ("redis", " +redis ")):
        values = [sample[name] for sample in spent if name in sample]
        if values and (name == "rabbitmq" or statistics.median(values) >= 0.01):
            text += prefix + fmt(statistics.median(values))
    return text.strip() or "-"


def ratio_cell(value: Optional[float], theirs: Outcome) -> str:
    if value is not None:
        return f"{value:.2f}"
    if theirs.na:
        return "n/a"
    if theirs.error:
        return "(peer error)"
    return "-"


def write_json(path: Path, payload: Dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str))


def plot_group_scaling(path: Path, plan: Plan, peers: List[Peer],
                       all_results: Dict[str, Results]) -> None:
    """Log-log plot of group(N).get() wall time against N, median with min..max bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    markers = {"ours": "o", "redis": "s", "rpc": "^", "cab": "D", "ours-transient": "v"}
    labelled: Dict[int, List[float]] = {}  # values already labelled at each N
    for peer in peers:
        points = [(n, all_results[peer.key][f"group_{n}_s"]) for n in plan.group_sizes]
        points = [(n, o) for n, o in points if o.samples and not o.error]
        if not points:
            continue
        sizes = [n for n, _ in points]
        medians = [statistics.median(o.samples) for _, o in points]
        low = [m - min(o.samples) for m, (_, o) in zip(medians, points)]
        high = [max(o.samples) - m for m, (_, o) in zip(medians, points)]
        ax.errorbar(sizes, medians, yerr=[low, high], marker=markers.get(peer.key, "o"),
                    capsize=3, linewidth=1.8, label=peer.label)
        for n, m in zip(sizes, medians):
            # label a point unless another label at this N is too close to read
            if all(abs(math.log10(m / other)) > 0.07 for other in labelled.get(n, [])):
                labelled.setdefault(n, []).append(m)
                ax.annotate(f"{m:.3g}s", (n, m), textcoords="offset points", xytext=(6, -10),
                            fontsize=7)
    ours = [(n, all_results.get("ours", {}).get(f"group_{n}_s")) for n in plan.group_sizes]
    ours = [(n, o) for n, o in ours if o is not None and o.median]
    if ours:  # a guide: linear growth through our smallest point
        n0, o0 = ours[0]
        xs = [plan.group_sizes[0], plan.group_sizes[-1]]
        ax.plot(xs, [o0.median * x / n0 for x in xs], color="grey", linestyle=":",
                linewidth=1, label="∝ N (guide through ours' first point)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(plan.group_sizes)
    ax.set_xticklabels([str(n) for n in plan.group_sizes])
    ax.set_xlabel("N (tasks in the group)")
    ax.set_ylabel("group(N).get() wall time, s (median, bars min..max)")
    ax.set_title(f"group(add x N).get(): prefork worker, concurrency 2, {plan.reps} rep(s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 rep, N up to 1000, 100 round trips (a few minutes)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per figure")
    parser.add_argument("--out", type=Path, default=HERE / "out", help="output directory")
    parser.add_argument("--peers", default=",".join(peer.key for peer in PEERS if peer.default),
                        help="comma-separated peers (default: %(default)s); any of: "
                             + ", ".join(peer.key for peer in PEERS))
    parser.add_argument("--no-floor", action="store_true", help="skip the raw floors")
    return parser.parse_args(argv)


def environment() -> Dict[str, Any]:
    import celery
    import kombu

    return {
        "python": platform.python_version(), "platform": platform.platform(),
        "cpus": os.cpu_count(), "celery": celery.__version__, "kombu": kombu.__version__,
        "amqp": amqp.__version__, "redis": redis.__version__,
        "rabbitmq": rabbitmq_version(), "broker": RABBIT_HOST,
        "opentelemetry_api": package_version("opentelemetry-api"),
        "load_average_at_start": os.getloadavg(),
        "server_pids": SERVER_CPU.pids if SERVER_CPU is not None else None,
    }


def package_version(name: str) -> Optional[str]:
    """The installed version of distribution ``name``, None if it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def rabbitmq_version() -> str:
    """The broker's version (``rabbitmqctl version``), or why it is not known."""
    try:
        return rabbitmqctl("version", timeout=60).strip()
    except (subprocess.SubprocessError, OSError) as exc:
        return f"unknown ({exc})"


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    plan = Plan.from_args(args)
    wanted = [key.strip() for key in args.peers.split(",") if key.strip()]
    unknown = set(wanted) - {peer.key for peer in PEERS}
    if unknown:
        print(f"unknown peer(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    peers = [peer for peer in PEERS if peer.key in wanted]
    specs = figure_specs(plan)
    out_dir = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    started = time.monotonic()
    global SERVER_CPU
    SERVER_CPU = ServerCpu.find(rabbitmqctl,
                                redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB))
    missing = [name for name, pid in SERVER_CPU.pids.items() if pid is None]
    if missing:
        print(f"server CPU: no figures for {', '.join(missing)} (its process was not "
              f"found on this host)", flush=True)
    payload: Dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "argv": sys.argv, "plan": plan.__dict__,
                               "plan_description": plan.describe(),
                               "environment": environment()}
    vhosts = Vhosts()
    all_results: Dict[str, Results] = {}
    floors: Results = {spec.key: Outcome(na="n/a: skipped") for spec in FLOOR_SPECS}
    peer_info: Dict[str, Any] = {}
    flush_redis()
    try:
        if not args.no_floor:
            floors = measure_floors(vhosts, plan)
        for peer in peers:
            print(f"\n== {peer.label} ==", flush=True)
            all_results[peer.key], peer_info[peer.key] = measure_peer(
                peer, vhosts, plan, out_dir, stamp, specs)
    finally:
        vhosts.delete_all()
        flush_redis()
    ratios = compute_ratios(all_results, floors, specs)
    print_report(plan, specs, peers, all_results, floors, ratios, peer_info)

    payload.update(
        seconds=round(time.monotonic() - started, 1),
        load_average_at_end=os.getloadavg(),
        figures={spec.key: {"label": spec.label, "unit": spec.unit,
                            "higher_is_better": spec.higher_is_better} for spec in specs},
        peers={key: {**peer_info[key],
                     "figures": {k: o.as_json() for k, o in results.items()}}
               for key, results in all_results.items()},
        floors={key: outcome.as_json() for key, outcome in floors.items()},
        floor_notes=FLOOR_NOTES,
        ratios=ratios,
        ratio_directions="ours / peer: for a rate > 1 means ours is faster; "
                         "for a time > 1 means ours is slower",
    )
    json_path = out_dir / f"results-{stamp}.json"
    write_json(json_path, payload)
    png_path = out_dir / f"group-scaling-{stamp}.png"
    try:
        plot_group_scaling(png_path, plan, peers, all_results)
    except Exception as exc:
        print(f"plot failed: {short_error(exc)}")
        png_path = None  # type: ignore[assignment]
    print(f"\ntotal {payload['seconds']} s")
    print(f"JSON: {json_path}")
    print(f"PNG:  {png_path}")
    print(f"worker logs: {out_dir}/worker-*-{stamp}.log")
    ours = all_results.get("ours")
    complete = ours is not None and all(
        outcome.na or (outcome.samples and not outcome.error) for outcome in ours.values())
    if not complete:
        print("ours: not every figure was measured (exit status 1)")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
