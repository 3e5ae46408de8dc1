"""What each broker operation of a result's life costs: latency and the node's CPU (issue 15).

    python benchmarks/op_costs.py [--ops N]

Each operation runs ``--ops`` times, one at a time on one py-amqp connection (publisher
confirms on, so a publish is timed until the broker confirms it), in a fresh vhost; the
table gives its latency (p50, p90) and the RabbitMQ node's CPU seconds per 1000 of it
(server_cpu.py).  These are the parts a store, a read and a wait are made of, so the
floor of any design is their sum; benchmarks/run.py gives the backend's figures and
benchmarks/designs.py whole store designs.

This is a measurement script: it asserts nothing about timings.
"""
from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

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
#: A body the size of a stored SUCCESS state.
BODY = b'{"status": "SUCCESS", "result": 2, "traceback": null, "children": []}'
#: The direct exchange the waiter bindings are made on.
ANNOUNCE = "op-costs.announce"


class Probe:
    """One connection in confirm mode; times operations and the node's CPU around them."""

    def __init__(self, vhost: str, cpu: ServerCpu, ops: int) -> None:
        self.conn = amqp.Connection(host=RABBIT_HOST, userid="guest", password="guest",
                                    virtual_host=vhost, confirm_publish=True)
        self.conn.connect()
        self.channel = self.conn.channel()
        self.cpu = cpu
        self.ops = ops
        self.run = uuid.uuid4().hex[:8]
        self.rows: List[List[str]] = []

    def queue(self, kind: str, index: int) -> str:
        return f"op-costs.{self.run}.{kind}.{index}"

    def measure(self, name: str, operation: Callable[[int], Any]) -> None:
        latencies: List[float] = []
        before = self.cpu.sample()
        for index in range(self.ops):
            started = time.perf_counter()
            operation(index)
            latencies.append((time.perf_counter() - started) * 1000)
        after = self.cpu.sample()
        latencies.sort()
        spent = ServerCpu.per_1000(before, after, self.ops).get("rabbitmq")
        self.rows.append([name, f"{latencies[len(latencies) // 2]:.2f}",
                          f"{latencies[int(len(latencies) * 0.9)]:.2f}",
                          "n/a" if spent is None else f"{spent:.2f}"])
        print(f"  {name}", file=sys.stderr, flush=True)

    def declare(self, kind: str, durable: bool = True,
                arguments: Optional[Dict[str, Any]] = None) -> Callable[[int], Any]:
        def operation(index: int) -> None:
            self.channel.queue_declare(
                self.queue(kind, index), durable=durable, auto_delete=False,
                arguments=QUEUE_ARGUMENTS if arguments is None else arguments)
        return operation

    def publish(self, kind: str, delivery_mode: int = 2) -> Callable[[int], Any]:
        def operation(index: int) -> None:
            self.channel.basic_publish(amqp.Message(BODY, delivery_mode=delivery_mode),
                                       exchange="", routing_key=self.queue(kind, index),
                                       mandatory=True)
        return operation

    def get_requeue(self, index: int) -> None:
        message = self.channel.basic_get(self.queue("v1", index))
        self.channel.basic_reject(message.delivery_tag, requeue=True)

    def get_missing(self, index: int) -> None:
        """A basic.get of a queue that does not exist: the broker closes the channel."""
        try:
            self.channel.basic_get(self.queue("missing", index))
        except NotFound:
            self.channel = self.conn.channel()

    def reopen(self, index: int) -> None:
        self.channel.close()
        self.channel = self.conn.channel()

    def close(self) -> None:
        self.conn.close()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=300, help="operations of each kind")
    args = parser.parse_args(argv)
    cpu = ServerCpu.find(rabbitmqctl, redis.Redis(host="127.0.0.1", port=6379))
    vhost = f"car-op-costs-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    probe = Probe(vhost, cpu, args.ops)
    try:
        version_2 = {**QUEUE_ARGUMENTS, "x-queue-version": 2}
        probe.measure("declare: new durable queue (our arguments)", probe.declare("v1"))
        probe.measure("declare: new durable queue, x-queue-version 2",
                      probe.declare("v2", arguments=version_2))
        probe.measure("declare: new transient queue (our arguments)",
                      probe.declare("transient", durable=False))
        probe.measure("declare: the same queue again", probe.declare("v1"))
        probe.measure("publish persistent + confirm: first in queue", probe.publish("v1"))
        probe.measure("  the same, x-queue-version 2", probe.publish("v2"))
        probe.measure("publish persistent + confirm: second in queue", probe.publish("v1"))
        probe.measure("  the same, x-queue-version 2", probe.publish("v2"))
        probe.measure("publish transient + confirm: first in queue",
                      probe.publish("transient", delivery_mode=1))
        probe.measure("basic.get + requeue (a read)", probe.get_requeue)
        probe.measure("basic.get of a missing queue + new channel", probe.get_missing)
        probe.measure("channel close + open (no error)", probe.reopen)
        probe.channel.exchange_declare(ANNOUNCE, "direct", durable=True, auto_delete=False)
        waiter = probe.channel.queue_declare("", exclusive=True)[0]
        probe.measure("queue.bind (waiter queue, task id)", lambda index: probe.channel.queue_bind(
            waiter, ANNOUNCE, probe.queue("v1", index)))
        probe.measure("queue.unbind", lambda index: probe.channel.queue_unbind(
            waiter, ANNOUNCE, probe.queue("v1", index)))
        probe.measure("queue.delete (a stored result)",
                      lambda index: probe.channel.queue_delete(probe.queue("v1", index)))
    finally:
        probe.close()
        delete_vhost(vhost)
    print(f"broker {RABBIT_HOST} ({rabbitmqctl('version').strip()}), {args.ops} operations "
          f"of each kind, one at a time")
    header = ["operation", "p50 ms", "p90 ms", "broker CPU s/1000"]
    widths = [max(len(row[i]) for row in [header, *probe.rows]) for i in range(4)]
    for row in [header, *probe.rows]:
        print("  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i])
                        for i, cell in enumerate(row)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
