"""Results on a 3-node cluster beside a single node, with classic and quorum result queues.

Run:  .venv/bin/python benchmarks/cluster.py [--reps 3] [--stores 300] [--calls 100]
      (about 3 minutes per rep on this project's 2-core machine)

For each broker (one private node; a private 3-node cluster, tests/cluster.py)
and each ``amqp_results_queue_type`` (classic, quorum), with fresh apps:

* stores/s, 1st state: ``store_result`` of a new task id (creates its queue);
* stores/s, 2nd state: a second state of each of those tasks (for quorum queues
  this is where replace.py takes the old state before storing the new one);
* reads/s: each result read once by another client (another node on the cluster);
* round trip p50/p99: ``add.delay(1, 1).get()`` with a real worker (prefork, 2).

Then the failover figures, on the cluster: a client storing new results in a
loop while the node it is connected to is killed (SIGKILL by pid): how long the
longest store took, and how many failed; then the same while the node that
leads the queues being written to dies.

The storing client and the worker connect through node 0 first, the reading
client and the round trip's caller through node 1 (failover URLs list every
node).  Medians over the reps.  The shared node on 127.0.0.1:5672 is never used.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_tasks import make_app  # noqa: E402
from celery import Celery, states  # noqa: E402
from harness import close_app, start_worker, stop_worker, wait_for_ping  # noqa: E402
from tests.cluster import Cluster  # noqa: E402
from tests.private_node import PrivateNode  # noqa: E402

FIGURES = ("stores/s, 1st state", "stores/s, 2nd state", "reads/s",
           "round trip p50 (ms)", "round trip p99 (ms)")
QUEUE_TYPES = ("classic", "quorum")


@contextlib.contextmanager
def app_for(url: str, queue_type: str) -> Iterator[Celery]:
    app = make_app(url, url, {"amqp_results_queue_type": queue_type})
    if app.backend.topology.queue_type != queue_type:
        raise SystemExit("this backend does not pass amqp_results_queue_type to its "
                         "Topology (backend.py)")
    try:
        yield app
    finally:
        close_app(app)


def rate(operation: Callable[[str], Any], items: List[str]) -> float:
    operation(items[0])  # opens the connection, untimed
    began = time.perf_counter()
    for item in items[1:]:
        operation(item)
    return (len(items) - 1) / (time.perf_counter() - began)


def percentile(values: List[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def measure(write_url: str, read_url: str, queue_type: str, stores: int, calls: int,
            log: Path) -> Dict[str, float]:
    """The figures of one broker and queue type (see the module docstring)."""
    figures: Dict[str, float] = {}
    ids = [str(uuid.uuid4()) for _ in range(stores + 1)]
    with app_for(write_url, queue_type) as writer, app_for(read_url, queue_type) as reader:
        figures["stores/s, 1st state"] = rate(
            lambda task_id: writer.backend.store_result(task_id, 1, "PROGRESS"), ids)
        figures["stores/s, 2nd state"] = rate(
            lambda task_id: writer.backend.store_result(task_id, 2, states.SUCCESS), ids)
        wrong = 0

        def read(task_id: str) -> None:
            nonlocal wrong
            if reader.backend.get_task_meta(task_id, cache=False)["result"] != 2:
                wrong += 1
        figures["reads/s"] = rate(read, ids)
        if wrong:
            raise RuntimeError(f"{wrong} reads did not find the stored state")
        for task_id in ids:
            writer.backend.forget(task_id)
        worker = start_worker(write_url, write_url, log, f"bench-{uuid.uuid4().hex[:8]}@%h",
                              {"amqp_results_queue_type": queue_type})
        try:
            wait_for_ping(reader, worker)
            add = reader.tasks["bench.add"]
            for _ in range(5):
                add.delay(1, 1).get(timeout=30)
            latencies = []
            for _ in range(calls):
                began = time.perf_counter()
                if add.delay(1, 1).get(timeout=30) != 2:
                    raise RuntimeError("add returned a wrong value")
                latencies.append((time.perf_counter() - began) * 1000)
        finally:
            stop_worker(worker)
    figures["round trip p50 (ms)"] = percentile(latencies, 0.50)
    figures["round trip p99 (ms)"] = percentile(latencies, 0.99)
    return figures


def failover(cluster: Cluster, queue_type: str, victim_leads: bool) -> Dict[str, float]:
    """Store new results in a loop and kill a node: the longest store, and failures.

    ``victim_leads``: the client connects through node 1 and stores second states
    of tasks whose queues node 0 leads or holds, round and round; else it is
    connected to node 0 and stores new tasks.  Node 0 is killed after 1 s, the
    loop runs 4 s more (and finishes the store in flight), then node 0 is started
    again.  Stores retry 5 times (about 4 s), not the default policy's 20.
    """
    url = cluster.failover_url(1 if victim_leads else 0)
    ids: List[str] = []
    if victim_leads:
        with app_for(cluster.failover_url(0), queue_type) as placer:
            # Stored through node 0: classic queues live there, quorum queues are
            # spread (balanced), so the ones node 0 leads are picked.
            for _ in range(300):
                task_id = str(uuid.uuid4())
                placer.backend.store_result(task_id, 1, "PROGRESS")
                ids.append(task_id)
        node0 = cluster.nodes[0].nodename
        queues = {row["name"]: row["node"] for row in cluster.queues(
            prefix="celery-results.task.")}
        ids = [task_id for task_id in ids
               if queues.get(f"celery-results.task.{task_id}") == node0]
    failures: List[str] = []
    latencies: List[Tuple[float, float]] = []
    stop = threading.Event()
    with app_for(url, queue_type) as app:

        def loop() -> None:
            backend = app.backend  # this thread's own (Celery's app.backend is per thread)
            # 5 retries (about 4 s): a store into a classic queue on the dead node fails
            # after that instead of after the default policy's 20 (about 19 s).
            backend.retry_policy.update(max_retries=5)
            backend.store_result(str(uuid.uuid4()), 0, states.SUCCESS)
            index = 0
            while not stop.is_set():
                task_id = ids[index % len(ids)] if victim_leads else str(uuid.uuid4())
                index += 1
                began = time.monotonic()
                try:
                    backend.store_result(task_id, index, states.SUCCESS)
                except Exception as exc:
                    failures.append(repr(exc))
                latencies.append((began, time.monotonic() - began))
        thread = threading.Thread(target=loop)
        thread.start()
        time.sleep(1.0)
        killed = cluster.kill(0)
        time.sleep(4.0)
        stop.set()
        thread.join()
    cluster.start_node(0)
    if failures:
        print(f"  {queue_type}: {len(failures)} failed stores, e.g. {failures[0][:200]}")
    after = [duration for began, duration in latencies if began + duration >= killed]
    return {"longest store (s)": max(after) if after else float("nan"),
            "stores after the kill": float(len(after)),
            "failed stores": float(len(failures))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=1)
    parser.add_argument("--stores", type=int, default=300)
    parser.add_argument("--calls", type=int, default=100)
    args = parser.parse_args()
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    results: Dict[Tuple[str, str], Dict[str, List[float]]] = {}
    starts: Dict[str, float] = {}
    for rep in range(args.reps):
        with PrivateNode() as node:
            starts["single node start (s)"] = node.last_start_seconds or 0.0
            for queue_type in QUEUE_TYPES:
                figures = measure(node.url, node.url, queue_type, args.stores, args.calls,
                                  out / "cluster-worker.log")
                print(f"rep {rep + 1} single node, {queue_type}: {figures}", flush=True)
                for key, value in figures.items():
                    results.setdefault(("single node", queue_type), {}) \
                        .setdefault(key, []).append(value)
        with Cluster(3) as cluster:
            starts["3-node cluster start (s)"] = cluster.last_start_seconds or 0.0
            for queue_type in QUEUE_TYPES:
                figures = measure(cluster.failover_url(0), cluster.failover_url(1),
                                  queue_type, args.stores, args.calls,
                                  out / "cluster-worker.log")
                print(f"rep {rep + 1} 3-node cluster, {queue_type}: {figures}", flush=True)
                for key, value in figures.items():
                    results.setdefault(("3-node cluster", queue_type), {}) \
                        .setdefault(key, []).append(value)
            if rep == args.reps - 1:
                failovers = {
                    (queue_type, victim_leads): failover(cluster, queue_type, victim_leads)
                    for queue_type in QUEUE_TYPES for victim_leads in (False, True)}
        starts["3-node cluster stop (s)"] = cluster.last_stop_seconds or 0.0

    print(f"\n{args.reps} rep(s), medians; {args.stores} stores and reads, "
          f"{args.calls} round trips per rep\n")
    columns = [f"{broker}, {queue_type}" for broker in ("single node", "3-node cluster")
               for queue_type in QUEUE_TYPES]
    print("| figure | " + " | ".join(columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for figure in FIGURES:
        cells = []
        for broker in ("single node", "3-node cluster"):
            for queue_type in QUEUE_TYPES:
                values = results[(broker, queue_type)][figure]
                median = statistics.median(values)
                cells.append(f"{median:.1f}" if "ms" in figure else f"{median:.0f}")
        print(f"| {figure} | " + " | ".join(cells) + " |")
    print("\nfailover on the cluster (node 0 killed by SIGKILL):\n")
    print("| queues | client | longest store (s) | stores after the kill | failed |")
    print("| --- | --- | --- | --- | --- |")
    for (queue_type, victim_leads), figures in failovers.items():
        who = ("on node 1, storing into queues node 0 holds/leads" if victim_leads
               else "connected to node 0, storing new results")
        print(f"| {queue_type} | {who} | {figures['longest store (s)']:.2f} | "
              f"{figures['stores after the kill']:.0f} | {figures['failed stores']:.0f} |")
    print()
    for name, seconds in starts.items():
        print(f"{name}: {seconds:.1f}")


if __name__ == "__main__":
    main()
