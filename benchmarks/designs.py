"""Prototypes of store designs, measured on the broker with py-amqp alone (issue 15).

    python benchmarks/designs.py [--results N] [--reps N] [--group N]

Each design stores ``--results`` results, one new result queue each (this project's
arguments, durable, persistent messages, publisher confirms), and is timed against
today's design in the same run, on the same broker, with the RabbitMQ node's CPU
seconds per 1000 results beside it (server_cpu.py).  Nothing here is in the package: a
design moves into it only once it wins and keeps the guarantees (docs in the issue's
closing note).

* ``today``      what store.py does: queue.declare (waits), publish mandatory + confirm,
  announcement + confirm: three round trips per result.
* ``predeclared`` (a) the sender declared the queue when it sent the task
  (``on_task_call``): the worker's store is the publish + announcement; the sender's
  declaration is timed apart (it moves to the caller, it does not vanish) and its
  broker CPU is counted in the design's.
* ``pipelined``  (b) declare with nowait, publish, announce, then one wait for both
  confirms: one round trip per result.
* ``spread-K``   (c) today's sequence on K connections at once (threads), K = 2 and 4.
* ``batched``    (d) a group's results in one go: every declaration nowait, every
  publish and announcement, then the confirms read once for the whole group.

Rates here are the broker's floor for each design, not the backend's figures.

Two more tables (``--waits N``, ``--no-hazards`` to skip the second):

* waits: the broker's side of one ``delay().get()`` under two wait protocols, task
  message left out (it is the same for every backend): ``bind`` is today's (bind the
  waiter queue, consume, peek the task's queue, which does not exist yet, the store,
  the announcement, unbind, cancel, purge); ``direct`` is design (e), the store
  announcing to the sender's waiter queue by the task's ``reply_to``: no binding, no
  peek, what a waiter needs only when that queue existed before the task was sent.
* hazards of design (a), on the broker: a read of a queue declared at send but not
  stored in yet (today's read takes an empty queue for another reader's hold and reads
  it again, amqp_results_peek_attempts times), and what a PENDING marker stored at send,
  the way round that, does to a task id sent again: it replaces the stored result.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List

import amqp
import redis
from amqp.exceptions import NotFound

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from harness import RABBIT_HOST, delete_vhost, rabbitmqctl  # noqa: E402
from server_cpu import ServerCpu  # noqa: E402

#: The result queue arguments this project declares (1 day, keep the newest state).
QUEUE_ARGUMENTS = {"x-max-length": 1, "x-overflow": "drop-head", "x-expires": 86_400_000}
#: The notify exchange waiters bind to (direct, nothing bound here).
ANNOUNCE = "designs.announce"
BODY = b'{"status": "SUCCESS", "result": 2, "traceback": null, "children": []}'
PROPERTIES = {"content_type": "application/json", "content_encoding": "utf-8",
              "delivery_mode": 2}


class Confirming:
    """A channel in confirm mode whose confirms are read when asked, not per publish."""

    def __init__(self, vhost: str) -> None:
        self.conn = amqp.Connection(host=RABBIT_HOST, userid="guest", password="guest",
                                    virtual_host=vhost)
        self.conn.connect()
        self.channel = self.conn.channel()
        self.channel.confirm_select()
        self.channel.exchange_declare(ANNOUNCE, "direct", durable=True, auto_delete=False)
        self.published = 0
        #: Delivery tags not confirmed yet (acks come out of order, some "multiple").
        self.outstanding: set[int] = set()
        self.nacked = 0
        self.channel.events["basic_ack"].add(self._ack)
        self.channel.events["basic_nack"].add(self._nack)

    def _ack(self, tag: int, multiple: bool) -> None:
        if multiple:
            self.outstanding = {t for t in self.outstanding if t > tag}
        else:
            self.outstanding.discard(tag)

    def _nack(self, tag: int, multiple: bool) -> None:
        self.nacked += 1
        self._ack(tag, multiple)

    def _sent(self) -> None:
        self.published += 1
        self.outstanding.add(self.published)

    def declare(self, queue: str, nowait: bool = False) -> None:
        self.channel.queue_declare(queue=queue, durable=True, auto_delete=False,
                                   arguments=QUEUE_ARGUMENTS, nowait=nowait)

    def publish(self, queue: str, announce: bool = True) -> None:
        self.channel.basic_publish(amqp.Message(BODY, **PROPERTIES), exchange="",
                                   routing_key=queue, mandatory=True)
        self._sent()
        if announce:
            self.announce(queue)

    def announce(self, queue: str) -> None:
        self.channel.basic_publish(amqp.Message(BODY, **PROPERTIES), exchange=ANNOUNCE,
                                   routing_key=queue)
        self._sent()

    def wait_confirms(self) -> None:
        while self.outstanding:
            self.conn.drain_events(timeout=30)
        if self.nacked:
            raise RuntimeError(f"{self.nacked} publishes nacked")

    def close(self) -> None:
        self.conn.close()


def names(count: int) -> List[str]:
    run = uuid.uuid4().hex[:8]
    return [f"designs.{run}.{i}" for i in range(count)]


def today(vhost: str, count: int) -> float:
    ch = Confirming(vhost)
    try:
        started = time.perf_counter()
        for queue in names(count):
            ch.declare(queue)
            ch.publish(queue, announce=False)
            ch.wait_confirms()
            ch.announce(queue)
            ch.wait_confirms()
        return time.perf_counter() - started
    finally:
        ch.close()


def predeclared(vhost: str, count: int, sender_seconds: List[float]) -> float:
    ch = Confirming(vhost)
    try:
        queues = names(count)
        started = time.perf_counter()
        for queue in queues:  # the sender, at on_task_call, one declaration per task
            ch.declare(queue)
        sender_seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        for queue in queues:  # the worker
            ch.publish(queue)
            ch.wait_confirms()
        return time.perf_counter() - started
    finally:
        ch.close()


def pipelined(vhost: str, count: int) -> float:
    ch = Confirming(vhost)
    try:
        started = time.perf_counter()
        for queue in names(count):
            ch.declare(queue, nowait=True)
            ch.publish(queue)
            ch.wait_confirms()
        return time.perf_counter() - started
    finally:
        ch.close()


def spread(vhost: str, count: int, connections: int) -> float:
    errors: List[BaseException] = []

    def part() -> None:
        try:
            today(vhost, count // connections)
        except BaseException as exc:  # reported after the join
            errors.append(exc)
    threads = [threading.Thread(target=part) for _ in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - started


def batched(vhost: str, count: int, group: int) -> float:
    ch = Confirming(vhost)
    try:
        queues = names(count)
        started = time.perf_counter()
        for first in range(0, count, group):
            part = queues[first:first + group]
            for queue in part:
                ch.declare(queue, nowait=True)
            for queue in part:
                ch.publish(queue)
            ch.wait_confirms()
        return time.perf_counter() - started
    finally:
        ch.close()


def wait_protocol(vhost: str, count: int, direct: bool) -> float:
    """Seconds for ``count`` waits, the broker's work of each in sequence (see module)."""
    ch = Confirming(vhost)
    waiter = ch.conn.channel()
    peeker = ch.conn.channel()
    queue = waiter.queue_declare("", exclusive=True, auto_delete=False)[0]
    delivered: List[Any] = []
    try:
        started = time.perf_counter()
        for task_queue in names(count):
            if not direct:
                waiter.queue_bind(queue, ANNOUNCE, task_queue)
            tag = waiter.basic_consume(queue, no_ack=True, callback=delivered.append)
            if not direct:
                try:
                    peeker.basic_get(task_queue)  # not stored yet: a channel error
                except NotFound:
                    peeker = ch.conn.channel()
            ch.declare(task_queue)
            ch.publish(task_queue, announce=False)
            ch.wait_confirms()
            if direct:
                ch.channel.basic_publish(amqp.Message(BODY, **PROPERTIES), exchange="",
                                         routing_key=queue)
                ch._sent()
            else:
                ch.announce(task_queue)
            ch.wait_confirms()
            while not delivered:
                ch.conn.drain_events(timeout=30)
            delivered.clear()
            if not direct:
                waiter.queue_unbind(queue, ANNOUNCE, task_queue, nowait=True)
            waiter.basic_cancel(tag, nowait=True)
            waiter.queue_purge(queue, nowait=True)
        return time.perf_counter() - started
    finally:
        ch.close()


def read_of_declared_queue(vhost: str, attempts: int) -> float:
    """Seconds one read (today's peek) takes on a queue that exists and holds nothing."""
    from celery_amqp_results.read import peek

    ch = Confirming(vhost)
    try:
        queue = names(1)[0]
        ch.declare(queue)
        started = time.perf_counter()
        if peek(ch.channel, queue, attempts) is not None:
            raise RuntimeError("an empty queue answered a state")
        return time.perf_counter() - started
    finally:
        ch.close()


def marker_replaces_result(vhost: str) -> bool:
    """True if a PENDING marker published when a task id is sent again drops its result."""
    ch = Confirming(vhost)
    try:
        queue = names(1)[0]
        ch.declare(queue)
        ch.channel.basic_publish(amqp.Message(b"SUCCESS", **PROPERTIES), exchange="",
                                 routing_key=queue)
        ch.channel.basic_publish(amqp.Message(b"PENDING", **PROPERTIES), exchange="",
                                 routing_key=queue)
        ch._sent()
        ch._sent()
        ch.wait_confirms()
        message = ch.channel.basic_get(queue, no_ack=True)
        # py-amqp hands a utf-8 body over as text
        return message is not None and message.body in (b"PENDING", "PENDING")
    finally:
        ch.close()


def report_waits(vhost: str, cpu: ServerCpu, count: int, reps: int) -> None:
    rates: Dict[str, List[float]] = {"bind": [], "direct": []}
    cpus: Dict[str, List[float]] = {"bind": [], "direct": []}
    for _ in range(reps):
        for key in rates:
            before = cpu.sample()
            seconds = wait_protocol(vhost, count, direct=key == "direct")
            rates[key].append(seconds / count * 1000)
            cpus[key].append(ServerCpu.per_1000(before, cpu.sample(), count)
                             .get("rabbitmq", float("nan")))
    print(f"waits: {count} per protocol and rep, {reps} reps, medians")
    print(f"{'protocol':<12} {'ms per wait':>12} {'broker CPU s/1000':>18}")
    for key in rates:
        print(f"{key:<12} {statistics.median(rates[key]):>12.2f} "
              f"{statistics.median(cpus[key]):>18.2f}")


def report_hazards(vhost: str) -> None:
    from celery_amqp_results.settings import DEFAULT_PEEK_ATTEMPTS

    seconds = read_of_declared_queue(vhost, DEFAULT_PEEK_ATTEMPTS)
    print(f"hazards of (a): one read of a declared, not yet stored result: "
          f"{seconds * 1000:.0f} ms ({DEFAULT_PEEK_ATTEMPTS} reads; a missing queue: one)")
    lost = marker_replaces_result(vhost)
    print(f"hazards of (a): a PENDING marker stored when a task id is sent again "
          f"{'REPLACES its stored result (result lost)' if lost else 'keeps the result'}")


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=int, default=400, help="results per design and rep")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--group", type=int, default=100, help="group size of 'batched'")
    parser.add_argument("--waits", type=int, default=200, help="waits per wait protocol")
    parser.add_argument("--no-hazards", action="store_true", help="skip the hazards of (a)")
    args = parser.parse_args(argv)
    cpu = ServerCpu.find(rabbitmqctl, redis.Redis(host="127.0.0.1", port=6379))
    vhost = f"car-designs-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    sender: List[float] = []
    designs: Dict[str, Callable[[], float]] = {
        "today": lambda: today(vhost, args.results),
        "predeclared": lambda: predeclared(vhost, args.results, sender),
        "pipelined": lambda: pipelined(vhost, args.results),
        "spread-2": lambda: spread(vhost, args.results, 2),
        "spread-4": lambda: spread(vhost, args.results, 4),
        "batched": lambda: batched(vhost, args.results, args.group),
    }
    rates: Dict[str, List[float]] = {key: [] for key in designs}
    cpus: Dict[str, List[float]] = {key: [] for key in designs}
    try:
        for _ in range(args.reps):
            for key, run in designs.items():  # interleaved: drift hits every design alike
                before = cpu.sample()
                seconds = run()
                rates[key].append(args.results / seconds)
                spent = ServerCpu.per_1000(before, cpu.sample(), args.results)
                cpus[key].append(spent.get("rabbitmq", float("nan")))
                # every queue of the rep goes: the next rep starts on an empty vhost
                rabbitmqctl("delete_vhost", vhost)
                rabbitmqctl("add_vhost", vhost)
                rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    finally:
        delete_vhost(vhost)
    base = statistics.median(rates["today"])
    print(f"broker {RABBIT_HOST} ({rabbitmqctl('version').strip()}), {args.results} results "
          f"per design and rep, {args.reps} reps, medians (min..max)")
    print(f"{'design':<12} {'results/s':>22} {'x today':>8} {'broker CPU s/1000':>18}")
    for key in designs:
        values = rates[key]
        print(f"{key:<12} {statistics.median(values):>9.0f} ({min(values):.0f}..{max(values):.0f})"
              .ljust(35) + f" {statistics.median(values) / base:>8.2f}"
              f" {statistics.median(cpus[key]):>18.2f}")
    print(f"predeclared: the sender's declarations ran at "
          f"{args.results / statistics.median(sender):.0f}/s (not in its rate)")
    vhost = f"car-designs-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        print()
        report_waits(vhost, cpu, args.waits, args.reps)
        if not args.no_hazards:
            print()
            report_hazards(vhost)
    finally:
        delete_vhost(vhost)
    return 0


if __name__ == "__main__":
    sys.exit(main())
