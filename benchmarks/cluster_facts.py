"""The RabbitMQ facts docs/cluster.md relies on, checked on a private 3-node cluster.

Run:  .venv/bin/python benchmarks/cluster_facts.py     (about 2 minutes)

Each fact is printed with what was observed.  Plain py-amqp, no backend code
except ``replace.py``, whose protocol the drop-on-return fact motivates.  The
clusters are tests/cluster.py's (own nodes, ports and data; the shared node is
never touched) and are removed at the end.
"""
from __future__ import annotations

import collections
import contextlib
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import amqp
from amqp import spec

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.cluster import Cluster, ClusterNode  # noqa: E402

from celery_amqp_results.replace import replace  # noqa: E402

NEWEST = {"x-max-length": 1, "x-overflow": "drop-head", "x-expires": 600_000}
QUORUM = {**NEWEST, "x-queue-type": "quorum"}


def connect(node: ClusterNode) -> amqp.Connection:
    conn = amqp.Connection(f"127.0.0.1:{node.port}", userid="guest", password="guest",
                           confirm_publish=True)
    conn.connect()
    return conn


def nack(channel: Any, tag: int) -> None:
    channel.send_method(spec.Basic.Nack, "Lbb", (tag, False, True))


def publish(channel: Any, queue: str, body: str, **properties: Any) -> None:
    channel.basic_publish(amqp.Message(body, delivery_mode=2, **properties), exchange="",
                          routing_key=queue, mandatory=True)


def drain(channel: Any, queue: str) -> List[str]:
    bodies = []
    while True:
        message = channel.basic_get(queue, no_ack=True)
        if message is None:
            return bodies
        bodies.append(message.body)


def outcome(call: Callable[[], Any]) -> str:
    try:
        return repr(call())
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:110]}"


def fact(text: str) -> None:
    print(f"- {text}", flush=True)


def arguments_and_expiry(conn: amqp.Connection) -> None:
    print("\n## quorum queue with the result arguments")
    channel = conn.channel()
    channel.queue_declare("f-args", durable=True, auto_delete=False, arguments=QUORUM)
    for index in range(3):
        publish(channel, "f-args", f"s{index}", expiration="60000")
    fact(f"x-max-length=1 + drop-head: 3 publishes leave {drain(channel, 'f-args')}")
    publish(channel, "f-args", "short", expiration="300")
    time.sleep(0.8)
    fact(f"per-message TTL 300 ms, read after 0.8 s: {drain(channel, 'f-args')}")
    for how in ("basic.get + nack", "passive declare", "nothing"):
        name = "f-exp-" + how.replace(" ", "")
        channel.queue_declare(name, durable=True, auto_delete=False,
                              arguments={**QUORUM, "x-expires": 2000})
        publish(channel, name, "x")
        began, gone = time.monotonic(), None
        while time.monotonic() - began < 7:
            probe = conn.channel()
            try:
                if how == "basic.get + nack":
                    message = probe.basic_get(name)
                    if message:
                        nack(probe, message.delivery_tag)
                elif how == "passive declare" or time.monotonic() - began > 6:
                    probe.queue_declare(name, passive=True)
                probe.close()
            except amqp.exceptions.NotFound:
                gone = time.monotonic() - began
                break
            time.sleep(0.5)
        fact(f"x-expires=2000, {how} every 0.5 s: "
             + (f"queue gone after {gone:.1f} s" if gone else "queue still there after 7 s"))
    for kw in ({"exclusive": True}, {"auto_delete": True}, {"durable": False}):
        options = {"durable": True, "auto_delete": False, "exclusive": False, **kw}
        fact(f"quorum queue with {kw}: " + outcome(lambda options=options: conn.channel()
             .queue_declare("f-refused", arguments={"x-queue-type": "quorum"}, **options)))


def drop_on_return(conn: amqp.Connection) -> None:
    print("\n## a state stored while a reader holds the old one (basic.get, then requeue)")
    channel = conn.channel()
    for kind, arguments in (("classic", NEWEST), ("quorum", QUORUM)):
        name = f"f-race-{kind}"
        channel.queue_declare(name, durable=True, auto_delete=False, arguments=arguments)
        publish(channel, name, "old")
        held = channel.basic_get(name)
        publish(channel, name, "new")
        nack(channel, held.delivery_tag)
        time.sleep(0.2)
        fact(f"{kind}: hold 'old', publish 'new', nack 'old' -> queue keeps {drain(channel, name)}")
        publish(channel, name, "old")
        held = channel.basic_get(name)
        publish(channel, name, "new")
        channel.basic_ack(held.delivery_tag)
        fact(f"{kind}: same with ack instead of nack -> {drain(channel, name)}")
    name = "f-race-replace"
    channel.queue_declare(name, durable=True, auto_delete=False, arguments=QUORUM)
    publish(channel, name, "old")
    reader = conn.channel()
    held = reader.basic_get(name)

    def give_back() -> None:
        nack(reader, held.delivery_tag)

    writer = connect_like(conn)
    wchannel = writer.channel()
    # The reader puts 'old' back 50 ms after the writer starts; replace waits for it.
    timer = threading.Timer(0.05, give_back)
    timer.start()
    replace(wchannel, name, lambda: (publish(wchannel, name, "new"), True)[1], grace=2.0)
    timer.join()
    time.sleep(0.2)
    fact(f"quorum, replace.py: reader holds 'old' and returns it 50 ms later -> queue keeps "
         f"{drain(channel, name)}")
    writer.close()


def connect_like(conn: amqp.Connection) -> amqp.Connection:
    host, port = conn.sock.getpeername()[:2] if conn.sock else ("127.0.0.1", 5672)
    other = amqp.Connection(f"{host}:{port}", userid="guest", password="guest",
                            confirm_publish=True)
    other.connect()
    return other


def delivery_count(conn: amqp.Connection) -> None:
    print("\n## x-delivery-count on quorum queues")
    channel = conn.channel()
    for how in ("nack", "reject"):
        name = f"f-dc-{how}"
        channel.queue_declare(name, durable=True, auto_delete=False,
                              arguments={**QUORUM, "x-delivery-limit": 5})
        publish(channel, name, "v")
        seen: List[Optional[int]] = []
        for _ in range(8):
            message = channel.basic_get(name)
            if message is None:
                seen.append(None)
                break
            seen.append((message.properties.get("application_headers") or {})
                        .get("x-delivery-count"))
            if how == "nack":
                nack(channel, message.delivery_tag)
            else:
                channel.basic_reject(message.delivery_tag, requeue=True)
        fact(f"x-delivery-limit=5, basic.get + {how} repeated: x-delivery-count {seen}")
    channel.queue_declare("f-dc-none", durable=True, auto_delete=False, arguments=QUORUM)
    publish(channel, "f-dc-none", "v")
    for _ in range(30):
        message = channel.basic_get("f-dc-none")
        nack(channel, message.delivery_tag)
    message = channel.basic_get("f-dc-none")
    fact(f"no x-delivery-limit (3.10's default): after 30 nack peeks the message is still "
         f"there ({message.body!r}, x-delivery-count "
         f"{(message.properties.get('application_headers') or {}).get('x-delivery-count')})")


def exclusive_consumers(cluster: Cluster) -> None:
    print("\n## exclusive consumers and prefetch 0 on a quorum queue (the chord log's read)")
    conn = connect(cluster.nodes[0])
    channel = conn.channel()
    channel.queue_declare("f-log", durable=True, auto_delete=False,
                          arguments={"x-queue-type": "quorum", "x-expires": 600_000})
    for index in range(2500):
        channel.basic_publish(amqp.Message(str(index), delivery_mode=2), exchange="",
                              routing_key="f-log")
    first, second = connect(cluster.nodes[1]), connect(cluster.nodes[2])
    got: List[Any] = []
    one = first.channel()
    one.basic_qos(0, 0, False)
    one.basic_consume("f-log", exclusive=True, callback=got.append)
    fact("second exclusive consumer from another connection: " + outcome(
        lambda: second.channel().basic_consume("f-log", exclusive=True,
                                               callback=lambda m: None)))
    began = time.monotonic()
    while time.monotonic() - began < 3:
        try:
            first.drain_events(timeout=0.2)
        except socket.timeout:
            pass
    fact(f"exclusive consumer with prefetch 0 received {len(got)} of 2500 ready messages "
         f"in 3 s (the rest went to the second consumer or wait for credit)")
    for each in (first, second, conn):
        each.close()


def placement(cluster: Cluster, label: str, cases: Dict[str, Dict[str, Any]]) -> None:
    names = {node.nodename: index for index, node in enumerate(cluster.nodes)}
    conn = connect(cluster.nodes[0])
    for case, arguments in cases.items():
        prefix = f"f-pl-{abs(hash((label, case))) % 10**8}-"
        channel = conn.channel()
        try:
            for index in range(30):
                channel.queue_declare(prefix + str(index), durable=True, auto_delete=False,
                                      arguments={**NEWEST, **arguments})
        except amqp.exceptions.PreconditionFailed as exc:
            fact(f"{label}, {case}: refused: {str(exc)[:120]}")
            continue
        where = collections.Counter(names.get(row["node"], row["node"])
                                    for row in cluster.queues(prefix=prefix))
        fact(f"{label}, {case}: 30 queues declared through node 0 land on nodes "
             f"{dict(sorted(where.items()))}")
    channel = conn.channel()
    channel.queue_declare("f-eq", durable=True, auto_delete=False,
                          arguments={**QUORUM, "x-queue-leader-locator": "balanced"})
    fact("quorum queue declared again without its x-queue-leader-locator: " + outcome(
        lambda: conn.channel().queue_declare("f-eq", durable=True, auto_delete=False,
                                             arguments=QUORUM)))
    fact("classic result queue declared again as quorum: " + outcome(
        lambda: (conn.channel().queue_declare("f-eq2", durable=True, auto_delete=False,
                                              arguments=NEWEST),
                 conn.channel().queue_declare("f-eq2", durable=True, auto_delete=False,
                                              arguments=QUORUM))))
    conn.close()


def attempt(node: ClusterNode, what: str, queue: str, arguments: Dict[str, Any]) -> str:
    """One operation on a fresh connection (a 541 closes the connection)."""
    conn = connect(node)
    try:
        channel = conn.channel()
        if what == "publish":
            publish(channel, queue, "after")
            return "confirmed"
        if what == "get":
            message = channel.basic_get(queue)
            if message is not None:
                nack(channel, message.delivery_tag)
            return f"got {message.body!r}" if message else "empty"
        channel.queue_declare(queue, durable=True, auto_delete=False, arguments=arguments)
        return "declared"
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:100]}"
    finally:
        try:
            conn.close()
        except Exception:
            pass


def node_death(cluster: Cluster) -> None:
    print("\n## a node dies (SIGKILL): queues it led or held, seen from node 1")
    names = {node.nodename: index for index, node in enumerate(cluster.nodes)}
    conn = connect(cluster.nodes[0])  # client-local: node 0 leads it
    channel = conn.channel()
    channel.queue_declare("f-q0", durable=True, auto_delete=False, arguments=QUORUM)
    publish(channel, "f-q0", "before")
    conn.close()
    led = next(row["name"] for row in cluster.queues(prefix="f-q0")
               if names.get(row["node"]) == 0)
    stuck_conn = connect(cluster.nodes[1])
    stuck = stuck_conn.channel()
    home = connect(cluster.nodes[0])
    home.channel().queue_declare("f-c0", durable=True, auto_delete=False, arguments=NEWEST)
    publish(home.channel(), "f-c0", "before")
    died = cluster.kill(0)
    firsts: Dict[str, float] = {}
    same_channel: List[str] = []
    while time.monotonic() - died < 5:
        for what in ("publish", "get", "declare"):
            result = attempt(cluster.nodes[1], what, led, QUORUM)
            key = f"{what}: {result.split(':')[0] if ':' in result else result}"
            firsts.setdefault(key, time.monotonic() - died)
        same_channel.append(outcome(lambda: publish(stuck, led, "same channel")))
        time.sleep(0.05)
    for key, at in firsts.items():
        fact(f"quorum queue led by the dead node, fresh connection each time, {key} "
             f"first at +{at:.2f} s")
    nacks = sum(1 for result in same_channel if "Nacked" in result)
    fact(f"the same channel publishing every 50 ms for 5 s: {nacks} of {len(same_channel)} "
         f"nacked (last: {same_channel[-1]})")
    for what in ("publish", "get", "declare"):
        fact(f"classic queue on the dead node, {what}: "
             + attempt(cluster.nodes[1], what, "f-c0", NEWEST))
    fact("new quorum queue declared while a node is down: "
         + attempt(cluster.nodes[1], "declare", "f-new", QUORUM)
         + ", members " + str(cluster.queues(prefix="f-new")[0]["members"]))
    began = time.monotonic()
    cluster.start_node(0)
    fact(f"node 0 started again and running in the cluster after "
         f"{time.monotonic() - began:.1f} s")
    fact("classic queue after its node returned, get: "
         + attempt(cluster.nodes[1], "get", "f-c0", NEWEST))


def probe(node: ClusterNode, name: str, what: str) -> str:
    """One operation on a fresh connection that gives up after 8 s; its outcome and time."""
    began = time.monotonic()
    try:
        conn = amqp.Connection(f"127.0.0.1:{node.port}", userid="guest", password="guest",
                               confirm_publish=True, read_timeout=8, write_timeout=8)
        conn.connect()
        channel = conn.channel()
        if what == "get":
            result = "got a message" if channel.basic_get(name) else "empty"
        elif what == "publish":
            publish(channel, name, "x")
            result = "confirmed"
        elif what == "delete":
            channel.queue_delete(name)
            result = "deleted"
        else:
            channel.queue_declare(name, durable=True, auto_delete=False, arguments=QUORUM)
            result = "declared"
        with contextlib.suppress(Exception):
            conn.close()
    except Exception as exc:
        result = f"{type(exc).__name__}: {str(exc)[:70]}"
    return f"{result} ({time.monotonic() - began:.1f} s)"


def declarations_in_flight(cluster: Cluster) -> None:
    print("\n## quorum queues being declared through a node when it is killed")
    names: List[str] = []
    stop = threading.Event()

    def declare_loop() -> None:
        try:
            channel = connect(cluster.nodes[0]).channel()
            while not stop.is_set():
                name = f"f-flight-{uuid.uuid4().hex[:8]}"
                names.append(name)
                channel.queue_declare(name, durable=True, auto_delete=False,
                                      arguments={**QUORUM, "x-queue-leader-locator": "balanced"})
                publish(channel, name, "v")
        except Exception:
            return  # the node died under it

    threads = [threading.Thread(target=declare_loop) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    cluster.kill(0)
    stop.set()
    for thread in threads:
        thread.join()
    # The last few declared per thread were in flight when node 0 died.
    suspects = names[-8:]
    broken = [name for name in suspects
              if not probe(cluster.nodes[1], name, "publish").startswith("confirmed")]
    fact(f"{len(names)} declared through node 0 by 4 threads, node 0 killed: of the last 8, "
         f"{len(broken)} refuse publishes while it is down")
    cluster.start_node(0)
    for name in broken:
        fact(f"{name}, node 0 back: get {probe(cluster.nodes[1], name, 'get')}; publish "
             f"{probe(cluster.nodes[1], name, 'publish')}; delete "
             f"{probe(cluster.nodes[1], name, 'delete')}; declared and published again: "
             f"{probe(cluster.nodes[1], name, 'declare')}, "
             f"{probe(cluster.nodes[1], name, 'publish')}")


def kombu_failover(cluster: Cluster) -> None:
    print("\n## kombu failover URLs")
    from kombu import Connection
    cluster.kill(0)
    conn = Connection(cluster.failover_url(0), connect_timeout=4)
    began = time.monotonic()
    conn.ensure_connection(max_retries=3, interval_start=0, interval_step=1, interval_max=1)
    fact(f"'amqp://node0;amqp://node1;amqp://node2' with node 0 dead: ensure_connection "
         f"connected to port {conn.port} in {(time.monotonic() - began) * 1000:.0f} ms")
    clone = conn.clone()
    fact(f"a clone starts again at the first URL (port {clone.port}) with all "
         f"{len(clone.alt)} URLs as alternates")
    clone.close()
    conn.close()
    cluster.start_node(0)


def atoms(cluster: Cluster) -> None:
    print("\n## Erlang atoms per quorum queue (RabbitMQ's 'Increased Atom Use' warning)")
    node = cluster.nodes[1]

    def count() -> int:
        return int(node.ctl("eval", "erlang:system_info(atom_count).").strip())

    conn = connect(node)
    channel = conn.channel()
    for kind, arguments in (("classic", NEWEST), ("quorum", QUORUM)):
        before = count()
        for index in range(200):
            channel.queue_declare(f"f-atom-{kind}-{index}", durable=True, auto_delete=False,
                                  arguments=arguments)
        for index in range(200):
            channel.queue_delete(f"f-atom-{kind}-{index}")
        fact(f"{kind}: 200 queues created and deleted: atom table +{count() - before} on a "
             f"member node (limit {node.ctl('eval', 'erlang:system_info(atom_limit).').strip()})")
    conn.close()


def main() -> None:
    began = time.monotonic()
    with Cluster(3) as cluster:
        print(f"3-node cluster ready in {cluster.last_start_seconds:.1f} s")
        conn = connect(cluster.nodes[0])
        arguments_and_expiry(conn)
        drop_on_return(conn)
        delivery_count(conn)
        conn.close()
        exclusive_consumers(cluster)
        print("\n## placement (default rabbitmq.conf)")
        placement(cluster, "default config", {
            "classic": {},
            "classic x-queue-master-locator=min-masters": {
                "x-queue-master-locator": "min-masters"},
            "classic x-queue-leader-locator=balanced": {"x-queue-leader-locator": "balanced"},
            "quorum": {"x-queue-type": "quorum"},
            "quorum x-queue-leader-locator=balanced": {
                "x-queue-type": "quorum", "x-queue-leader-locator": "balanced"},
        })
        node_death(cluster)
        kombu_failover(cluster)
        declarations_in_flight(cluster)
        atoms(cluster)
    print(f"\n(cluster stopped in {cluster.last_stop_seconds:.1f} s)")
    with Cluster(3, extra_config="queue_leader_locator = balanced") as cluster:
        print("\n## placement with queue_leader_locator = balanced in rabbitmq.conf")
        placement(cluster, "queue_leader_locator = balanced",
                  {"classic": {}, "quorum": {"x-queue-type": "quorum"}})
    with Cluster(3, extra_config="queue_master_locator = min-masters") as cluster:
        print("\n## placement with queue_master_locator = min-masters in rabbitmq.conf")
        placement(cluster, "queue_master_locator = min-masters",
                  {"classic": {}, "quorum": {"x-queue-type": "quorum"}})
    print(f"\nall facts checked in {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
