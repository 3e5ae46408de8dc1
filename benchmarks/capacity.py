"""Capacity: what one stored result costs a RabbitMQ node in memory and on disk.

    python benchmarks/capacity.py [--results 10000] [--phases small,transient,large]
                                  [--rates 10,50,100,200] [--settle 10]

Every stored result is a durable queue ``celery-results.task.<id>`` (one Erlang process
on the node) holding one message (README "Broker topology").  Each phase runs on a
fresh PRIVATE RabbitMQ node (tests/private_node.py: own node name, ports, cookie and
data dir; the shared node on 127.0.0.1:5672 is never touched), so that neither other
activity nor an earlier phase shows up in the figures:

1. start the node, let it settle, read its memory (``rabbitmqctl status``: the
   ``memory_breakdown`` categories plus the Erlang-allocated and RSS totals) and the
   size of its data dir;
2. store ``--results`` SUCCESS states from this process with
   ``app.backend.store_result(uuid, value, "SUCCESS")`` (``Celery(broker=url,
   backend=url)``, Celery's default ``result_expires`` of one day), close the app's
   connections, let the node settle (``--settle`` seconds, then a read every 5 s until
   two reads agree within 1 %), read memory and disk again;
3. only then list the queues (listing wakes every hibernated queue process, so it must
   come after the memory read) to count queues and messages and the body bytes held.

Phases: ``small`` (a ~100-byte JSON dict, ``result_persistent=True``, the default),
``transient`` (the same value, ``result_persistent=False``), ``large`` (a ~10 KB
JSON value, persistent).

Prints per-result figures, the extrapolation to ``rate x 86 400`` results alive (one
day of results at each ``--rates`` task rate) and a paragraph for the README; writes
every reading to benchmarks/out/capacity-<timestamp>.json.  The extrapolation is
linear from ``--results`` results.  Each node is destroyed on every exit path.  This
is a measurement script: it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from celery import Celery

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (HERE, ROOT):  # harness from here; tests.private_node from the repo root
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from harness import close_app  # noqa: E402  (needs HERE on sys.path)
from tests.private_node import PrivateNode  # noqa: E402  (needs ROOT on sys.path)

#: Celery's default result_expires (one day): how long a stored result stays alive.
RESULT_LIFETIME_S = 86_400
#: RabbitMQ's default vm_memory_high_watermark (relative): publishers are blocked once
#: the node uses this fraction of the machine's RAM.
DEFAULT_WATERMARK = 0.4
GIB = 1024 ** 3
MIB = 1024 ** 2
#: Prefix of the result queues (the default ``amqp_results_queue_prefix``).
TASK_QUEUE_PREFIX = "celery-results.task."
#: Memory categories not shown per result: totals, and what RabbitMQ derives from them.
NOT_CATEGORIES = {"total", "strategy"}
#: Settling: a read every SETTLE_INTERVAL s after the first wait until two reads of the
#: Erlang-allocated total agree within SETTLE_TOLERANCE, at most SETTLE_READS reads.
SETTLE_INTERVAL = 5.0
SETTLE_TOLERANCE = 0.01
SETTLE_READS = 8


# -- values ------------------------------------------------------------------------------------


def small_value(index: int) -> Dict[str, Any]:
    """A realistic small task result: about 100 bytes of JSON."""
    return {"order_id": 1_000_000 + index, "status": "shipped", "items": 3 + index % 5,
            "total": f"{149.9 + index % 100:.2f}", "currency": "EUR", "warehouse": "DE-2"}


def large_value(index: int, target: int = 10 * 1024) -> Dict[str, Any]:
    """A realistic larger task result: a list of line items, about ``target`` bytes of JSON."""
    rows: List[Dict[str, Any]] = []
    value: Dict[str, Any] = {"order_id": 1_000_000 + index, "lines": rows}
    size = len(json.dumps(value))
    line = 0
    while size < target:
        row = {"line": line, "sku": f"SKU-{(index * 31 + line) % 999_999:06d}",
               "qty": 1 + line % 4, "price": f"{9.99 + line % 50:.2f}"}
        rows.append(row)
        size += len(json.dumps(row)) + 2
        line += 1
    return value


#: name -> (description, result_persistent, value factory)
PHASES: Dict[str, Tuple[str, bool, Callable[[int], Dict[str, Any]]]] = {
    "small": ("~100 B value, persistent", True, small_value),
    "transient": ("~100 B value, transient", False, small_value),
    "large": ("~10 KB value, persistent", True, large_value),
}


# -- node readings -----------------------------------------------------------------------------


def read_memory(node: PrivateNode) -> Dict[str, Any]:
    """One reading of ``rabbitmqctl status``: memory categories, totals, processes, queues.

    ``memory_breakdown`` (rabbitmq-diagnostics) has the same categories but not the
    totals; ``status`` has both, and with ``vm_memory_calculation_strategy = rss`` (the
    3.10 default) its ``rss`` total is what the memory alarm compares to the watermark.
    """
    status = json.loads(node.ctl("status", "--formatter", "json", timeout=120))
    memory = status["memory"]
    categories = {key: int(value) for key, value in memory.items()
                  if key not in NOT_CATEGORIES and isinstance(value, (int, float))}
    totals = {key: int(value) for key, value in memory["total"].items()}
    return {
        "at": time.time(),
        "categories": categories,
        "erlang": totals["erlang"],
        "rss": totals["rss"],
        "allocated": totals["allocated"],
        "strategy": memory.get("strategy"),
        "processes": int(status["processes"]["used"]),
        "process_limit": int(status["processes"]["limit"]),
        "queue_count": int(status["totals"]["queue_count"]),
    }


def node_info(node: PrivateNode) -> Dict[str, Any]:
    status = json.loads(node.ctl("status", "--formatter", "json", timeout=120))
    return {"rabbitmq": status.get("rabbitmq_version"),
            "erlang": status.get("erlang_version"),
            "watermark_setting": status.get("vm_memory_high_watermark_setting"),
            "watermark_limit_bytes": status.get("vm_memory_high_watermark_limit"),
            "memory_strategy": status.get("vm_memory_calculation_strategy"),
            "process_limit": status["processes"]["limit"]}


def disk_usage(path: Path) -> Dict[str, int]:
    """Like ``du -sb`` (apparent bytes) and ``du -s --block-size=1`` (allocated bytes).

    Directories count as du counts them (CQv1 gives every queue a directory of its own).
    """
    apparent = allocated = files = 0
    for folder, dirs, names in os.walk(path):
        for name, is_file in [*((name, True) for name in names),
                              *((name, False) for name in dirs)]:
            try:
                info = os.lstat(os.path.join(folder, name))
            except OSError:  # a file the node removed meanwhile
                continue
            apparent += info.st_size
            allocated += info.st_blocks * 512
            files += is_file
    return {"apparent": apparent, "allocated": allocated, "files": files}


def settle(node: PrivateNode, first_wait: float, label: str) -> List[Dict[str, Any]]:
    """Wait ``first_wait`` s, then read until two reads agree; every reading, last = settled.

    Idle queue processes hibernate (which shrinks their heaps) a few seconds after
    their last message; there is no general way to force a GC from outside, so this
    waits it out.
    """
    time.sleep(first_wait)
    reads = [read_memory(node)]
    while len(reads) < SETTLE_READS:
        time.sleep(SETTLE_INTERVAL)
        reads.append(read_memory(node))
        previous, last = reads[-2]["erlang"], reads[-1]["erlang"]
        if abs(last - previous) <= SETTLE_TOLERANCE * previous:
            break
    trail = ", ".join(f"{read['erlang'] / MIB:.1f}" for read in reads)
    print(f"  {label}: Erlang-allocated MiB per read: {trail}", flush=True)
    return reads


#: Evaluated on the node: ``{queue processes, of them hibernating, their memory in bytes}``.
#: A classic queue process starts in ``rabbit_prequeue:init/1``; process_info does not
#: wake a hibernating process.
QUEUE_PROCESSES_EXPR = (
    "Qs = [P || P <- erlang:processes(), "
    "case proc_lib:translate_initial_call(P) of {rabbit_prequeue, init, 1} -> true; "
    "_ -> false end], "
    "Info = [I || P <- Qs, I <- [erlang:process_info(P, [memory, current_function])], "
    "I =/= undefined], "
    "Hib = length([I || I <- Info, "
    "lists:keyfind(current_function, 1, I) =:= {current_function, {erlang, hibernate, 3}}]), "
    "Mem = lists:sum([element(2, lists:keyfind(memory, 1, I)) || I <- Info]), "
    "{length(Info), Hib, Mem}.")


def queue_processes(node: PrivateNode) -> Optional[Dict[str, int]]:
    """How many queue processes there are, how many hibernate, and their own memory."""
    try:
        out = node.ctl("eval", QUEUE_PROCESSES_EXPR, timeout=300)
        count, hibernating, memory = (int(word) for word in re.findall(r"\d+", out))
    except Exception as exc:  # informative only
        print(f"  (could not inspect the queue processes: {exc})", flush=True)
        return None
    return {"count": count, "hibernating": hibernating, "memory": memory}


def queue_stats(node: PrivateNode) -> Dict[str, Any]:
    """Result queues, their messages and body bytes, and their processes' memory (now)."""
    out = node.ctl("list_queues", "-p", "/", "name", "messages", "message_bytes",
                   "message_bytes_persistent", "message_bytes_ram", "memory",
                   "--formatter", "json", "-q", timeout=600)
    rows = [row for row in json.loads(out or "[]")
            if str(row["name"]).startswith(TASK_QUEUE_PREFIX)]
    total = {key: sum(int(row.get(key) or 0) for row in rows)
             for key in ("messages", "message_bytes", "message_bytes_persistent",
                         "message_bytes_ram", "memory")}
    return {"queues": len(rows), **total}


# -- one phase ---------------------------------------------------------------------------------


def store_results(url: str, count: int, persistent: bool,
                  value: Callable[[int], Dict[str, Any]]) -> Dict[str, Any]:
    """Store ``count`` SUCCESS states with this backend; closes the app's connections."""
    app = Celery("capacity", broker=url, backend=url, set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=True, result_persistent=persistent)
    backend = app.backend
    step = max(count // 10, 1)
    try:
        began = time.perf_counter()
        for index in range(count):
            backend.store_result(str(uuid.uuid4()), value(index), "SUCCESS")
            if (index + 1) % step == 0 and index + 1 < count:
                elapsed = time.perf_counter() - began
                print(f"  stored {index + 1}/{count} ({(index + 1) / elapsed:.0f}/s)",
                      flush=True)
        seconds = time.perf_counter() - began
    finally:
        close_app(app)
    return {"seconds": seconds, "per_second": count / seconds,
            "value_json_bytes": len(json.dumps(value(0)))}


def run_phase(name: str, count: int, settle_s: float) -> Dict[str, Any]:
    """One phase on a fresh private node: baseline, store ``count``, settle, measure."""
    description, persistent, value = PHASES[name]
    print(f"\n== {name}: {count} results, {description} ==", flush=True)
    node = PrivateNode()
    try:
        node.start()
        data_dir = node.base / "mnesia"
        print(f"  private node {node.nodename} on {node.url} "
              f"(booted in {node.last_start_seconds:.1f} s)", flush=True)
        info = node_info(node)
        before_reads = settle(node, settle_s, "baseline")
        disk_before = disk_usage(data_dir)
        store = store_results(node.url, count, persistent, value)
        print(f"  stored {count} in {store['seconds']:.1f} s "
              f"({store['per_second']:.0f}/s); settling", flush=True)
        after_reads = settle(node, settle_s, "after store")
        processes = queue_processes(node)
        if processes is not None:
            print(f"  {processes['count']} queue processes, {processes['hibernating']} "
                  f"hibernating, {processes['memory'] / MIB:.1f} MiB of their own", flush=True)
        disk_after = disk_usage(data_dir)
        queues = queue_stats(node)  # after the memory reads: listing wakes the queues
    finally:
        node.destroy()
    return {"phase": name, "description": description, "persistent": persistent,
            "results": count, "node": info, "store": store,
            "before": before_reads, "after": after_reads,
            "disk_before": disk_before, "disk_after": disk_after, "queues": queues,
            "queue_processes": processes,
            "per_result": per_result(before_reads[-1], after_reads[-1], disk_before,
                                     disk_after, queues, processes, count)}


def per_result(before: Dict[str, Any], after: Dict[str, Any], disk_before: Dict[str, int],
               disk_after: Dict[str, int], queues: Dict[str, Any],
               processes: Optional[Dict[str, int]], count: int) -> Dict[str, Any]:
    """Settled deltas divided by the number of results stored."""
    categories = {key: (after["categories"].get(key, 0) - before["categories"].get(key, 0))
                  / count for key in sorted(set(before["categories"]) | set(after["categories"]))}
    return {
        "erlang": (after["erlang"] - before["erlang"]) / count,
        "rss": (after["rss"] - before["rss"]) / count,
        "categories": categories,
        "processes": (after["processes"] - before["processes"]) / count,
        "disk_apparent": (disk_after["apparent"] - disk_before["apparent"]) / count,
        "disk_allocated": (disk_after["allocated"] - disk_before["allocated"]) / count,
        "disk_files": (disk_after["files"] - disk_before["files"]) / count,
        "body_bytes": queues["message_bytes"] / max(queues["messages"], 1),
        "queue_proc_memory_awake": queues["memory"] / max(queues["queues"], 1),
        "queue_proc_memory_settled": (processes["memory"] / max(processes["count"], 1)
                                      if processes else None),
    }


# -- report ------------------------------------------------------------------------------------


def kib(value: float) -> str:
    return f"{value / 1024:.2f}"


def size(value: float) -> str:
    """Bytes as MiB below 1 GiB, else GiB."""
    return f"{value / MIB:.0f} MiB" if value < GIB else f"{value / GIB:.1f} GiB"


def table(headers: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).rjust(width) if index else str(cell).ljust(width)
                       for index, (cell, width) in enumerate(zip(line, widths)))
             for line in [headers, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def per_result_table(phases: List[Dict[str, Any]]) -> str:
    """KiB per stored result in each phase, with the categories that moved."""
    shown = sorted({key for phase in phases
                    for key, value in phase["per_result"]["categories"].items()
                    if abs(value) >= 64},
                   key=lambda key: -max(abs(p["per_result"]["categories"].get(key, 0))
                                        for p in phases))
    rows: List[List[str]] = [
        ["message body (B)"] + [f"{p['per_result']['body_bytes']:.0f}" for p in phases],
        ["store rate (results/s)"] + [f"{p['store']['per_second']:.0f}" for p in phases],
        ["Erlang processes"] + [f"{p['per_result']['processes']:.2f}" for p in phases],
        ["queue processes hibernating"] + [
            f"{p['queue_processes']['hibernating']}/{p['queue_processes']['count']}"
            if p["queue_processes"] else "n/a" for p in phases],
        ["memory, RSS (KiB)"] + [kib(p["per_result"]["rss"]) for p in phases],
        ["memory, Erlang-allocated (KiB)"] + [kib(p["per_result"]["erlang"]) for p in phases],
    ]
    rows += [[f"  {key} (KiB)"] + [kib(p["per_result"]["categories"].get(key, 0))
                                   for p in phases] for key in shown]
    rows += [
        ["  (one queue process itself, KiB)"] + [
            kib(p["per_result"]["queue_proc_memory_settled"])
            if p["per_result"]["queue_proc_memory_settled"] is not None else "n/a"
            for p in phases],
        ["disk, apparent (KiB)"] + [kib(p["per_result"]["disk_apparent"]) for p in phases],
        ["disk, allocated (KiB)"] + [kib(p["per_result"]["disk_allocated"]) for p in phases],
        ["results per GiB (RSS)"] + [f"{GIB / p['per_result']['rss']:,.0f}"
                                     if p["per_result"]["rss"] > 0 else "n/a"
                                     for p in phases],
    ]
    return table(["per stored result"] + [p["phase"] for p in phases], rows)


def projection(phases: List[Dict[str, Any]], rates: List[int]) -> List[Dict[str, Any]]:
    """Results alive at ``rate`` tasks/s with a 1-day result_expires, and what they cost."""
    rows = []
    for rate in rates:
        alive = rate * RESULT_LIFETIME_S
        row: Dict[str, Any] = {"rate": rate, "alive": alive, "phases": {}}
        for phase in phases:
            baseline = phase["before"][-1]["rss"]
            results = phase["per_result"]["rss"] * alive
            row["phases"][phase["phase"]] = {
                "results_rss": results,
                "node_rss": baseline + results,
                "ram_at_default_watermark": (baseline + results) / DEFAULT_WATERMARK,
                "disk_allocated": phase["per_result"]["disk_allocated"] * alive,
            }
        rows.append(row)
    return rows


def projection_table(phases: List[Dict[str, Any]], rows: List[Dict[str, Any]]) -> str:
    headers = ["tasks/s", "results alive"]
    for phase in phases:
        headers += [f"{phase['phase']}: memory", f"{phase['phase']}: RAM@0.4"]
    lines = []
    for row in rows:
        line = [str(row["rate"]), f"{row['alive']:,}"]
        for phase in phases:
            cost = row["phases"][phase["phase"]]
            line += [size(cost["results_rss"]), size(cost["ram_at_default_watermark"])]
        lines.append(line)
    return table(headers, lines)


#: Categories left out of "of which" in the README text: not allocated by Erlang.
NOT_ERLANG = {"reserved_unallocated", "allocated_unused"}


def case_sentence(phase: Dict[str, Any]) -> str:
    """One README bullet: what one result of this phase costs."""
    pr = phase["per_result"]
    erlang_parts = sorted(((key, value) for key, value in pr["categories"].items()
                           if key not in NOT_ERLANG and value > 0),
                          key=lambda item: -item[1])[:2]
    kind = ("persistent (the default)" if phase["persistent"]
            else "transient (`result_persistent=False`)")
    per_gib = f"about {GIB / pr['rss']:,.0f} results per GiB" if pr["rss"] > 0 else "n/a"
    return (f"- {phase['store']['value_json_bytes']}-byte JSON value "
            f"({pr['body_bytes']:.0f}-byte message body), {kind}: "
            f"{pr['rss'] / 1024:.1f} KiB of node memory per result (RSS; "
            f"{pr['erlang'] / 1024:.1f} KiB allocated by Erlang, of which "
            + ", ".join(f"`{key}` {value / 1024:.1f} KiB" for key, value in erlang_parts)
            + f") and {pr['disk_allocated'] / 1024:.1f} KiB of disk; {per_gib}.")


def readme_paragraph(phases: List[Dict[str, Any]], rows: List[Dict[str, Any]]) -> str:
    by_name = {phase["phase"]: phase for phase in phases}
    base = by_name.get("small", phases[0])
    node = base["node"]
    erlang = str(node["erlang"]).split(" [")[0]
    procs = base["per_result"]["processes"]
    lines = [
        f"Every stored result is a durable classic queue holding one message: "
        f"{procs:.0f} Erlang processes on the node (the queue and its supervisor). "
        f"Measured with `benchmarks/capacity.py` on RabbitMQ {node['rabbitmq']} "
        f"({erlang}, one node): {base['results']:,} results stored from one process, "
        f"each case on a fresh node, memory read with `rabbitmqctl status` once the "
        f"queue processes had hibernated, disk as the growth of the node's data "
        f"directory (allocated blocks):", ""]
    lines += [case_sentence(by_name[name]) for name in PHASES if name in by_name]
    if "small" in by_name and "large" in by_name:
        small, large = by_name["small"]["per_result"], by_name["large"]["per_result"]
        binary = (large["categories"].get("binary", 0)
                  - small["categories"].get("binary", 0))
        lines.append(
            f"\nThe {large['body_bytes'] - small['body_bytes']:,.0f} extra body bytes of the "
            f"large value add {(large['rss'] - small['rss']) / 1024:.1f} KiB of memory "
            f"(`binary` {binary / 1024:.1f} KiB: "
            f"a classic queue keeps the message in memory as well as on disk) and "
            f"{(large['disk_allocated'] - small['disk_allocated']) / 1024:.1f} KiB of disk "
            f"per result; the rest of the cost is the queue itself.")
    limit = node["process_limit"]
    max_results = limit / procs if procs > 0 else float("inf")
    estimates = "; ".join(
        f"{row['rate']} tasks/s: {row['alive']:,} results, "
        f"{size(row['phases'][base['phase']]['results_rss'])}"
        for row in rows)
    lines.append(
        f"\nWith Celery's default `result_expires` of one day a node holds "
        f"rate x 86 400 results. Extrapolated linearly from the "
        f"{base['description']} case: {estimates}. RabbitMQ blocks publishers once the "
        f"node uses {DEFAULT_WATERMARK:.0%} of the machine's RAM (default "
        f"`vm_memory_high_watermark`), so the machine needs {1 / DEFAULT_WATERMARK:g} "
        f"times that. The node's default Erlang process limit ({limit:,}, "
        f"`RABBITMQ_MAX_NUMBER_OF_PROCESSES`) allows about {max_results:,.0f} results, "
        f"which {max_results / RESULT_LIFETIME_S:.1f} tasks/s reach with a one-day expiry. "
        f"The cost per result does not depend on the task rate; a shorter "
        f"`result_expires`, or `forget()` once a result has been read, keeps fewer alive.")
    return "\n".join(lines)


def environment() -> Dict[str, Any]:
    import celery
    import kombu
    return {"python": platform.python_version(), "celery": celery.__version__,
            "kombu": kombu.__version__, "platform": platform.platform(),
            "cpus": os.cpu_count()}


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=int, default=10_000,
                        help="results stored per phase (default 10000)")
    parser.add_argument("--phases", default="small,transient,large",
                        help=f"comma-separated, from {', '.join(PHASES)} (default: all)")
    parser.add_argument("--rates", default="10,50,100,200",
                        help="task rates (tasks/s) to extrapolate to (default 10,50,100,200)")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="seconds to wait before the first memory read (default 10)")
    parser.add_argument("--out", type=Path, default=HERE / "out",
                        help="folder for the JSON file (default benchmarks/out)")
    args = parser.parse_args(argv)
    args.phases = [name.strip() for name in args.phases.split(",") if name.strip()]
    unknown = [name for name in args.phases if name not in PHASES]
    if unknown or not args.phases:
        parser.error(f"unknown phase(s) {unknown}; choose from {', '.join(PHASES)}")
    args.rates = [int(rate) for rate in args.rates.split(",") if rate.strip()]
    if args.results <= 0:
        parser.error("--results must be positive")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    payload: Dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                               "argv": sys.argv, "results": args.results,
                               "settle_s": args.settle, "environment": environment(),
                               "phases": []}
    phases: List[Dict[str, Any]] = payload["phases"]
    for name in args.phases:
        phases.append(run_phase(name, args.results, args.settle))
    rows = projection(phases, args.rates)
    payload["projection"] = rows
    paragraph = readme_paragraph(phases, rows)
    payload["readme_paragraph"] = paragraph
    payload["total_s"] = time.monotonic() - started

    node = phases[0]["node"]
    print(f"\nRabbitMQ {node['rabbitmq']}, {node['erlang']}; memory strategy "
          f"{node['memory_strategy']}; {args.results:,} results per phase, "
          f"each phase on a fresh private node\n")
    print(per_result_table(phases))
    print(f"\nMemory for the results alive with result_expires = 1 day (rate x 86 400), "
          f"extrapolated linearly; RAM@0.4 = (node baseline + results) / "
          f"{DEFAULT_WATERMARK} (default vm_memory_high_watermark)\n")
    print(projection_table(phases, rows))
    print("\nSuggested README paragraph:\n")
    print(paragraph)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"capacity-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2, default=str))
    print(f"\nraw numbers: {path}\ntotal {payload['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
