"""Load check: N results stored by a real worker, read by R processes at once, then forgotten.

    python benchmarks/load.py [--results 10000] [--readers 4] [--get-every 5]

1. Starts a real Celery worker (prefork, concurrency 2) with this backend on a fresh
   vhost (``amqp://guest:guest@127.0.0.1:5672/<vhost>``, broker and results alike).
2. Sends N ``bench.add(i, 7)`` tasks (in groups of ``--chunk``) and joins them all;
   every task has its own value, so a result read under the wrong id shows.
3. Starts R reader processes (multiprocessing, spawn) that read all N results twice
   (two full passes, each in its own shuffled order), mostly with
   ``backend.get_task_meta(id, cache=False)`` and one id in ``--get-every`` with
   ``AsyncResult(id).get(timeout=...)``.  Each counts results lost (not read as
   SUCCESS), read with a wrong value (and how many of those are another task's
   value), and records its RSS before reading, after 10 % of pass 1, and at the end
   of each pass.
4. Counts the result queues (``celery-results.task.*``) in the vhost, forgets all N
   results from this process, and counts them again.

Prints a summary.  Exit status 0 only if nothing was lost or misread and no result
queue is left after forget().  The worker is stopped (SIGTERM, 20 s, SIGKILL) and
the vhost deleted on every exit path.  This is a measurement script: it asserts
nothing about timings.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from celery import Celery, group, states
from celery.result import AsyncResult

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_tasks import make_app  # noqa: E402  (needs HERE on sys.path)
from harness import (  # noqa: E402  (needs HERE on sys.path)
    amqp_url,
    close_app,
    delete_vhost,
    rabbitmqctl,
    start_worker,
    stop_worker,
    wait_for_ping,
)

#: Added to each task's index: task i returns i + ADDEND, a value no other task returns.
ADDEND = 7
#: Prefix of the result queues (the default ``amqp_results_queue_prefix``).
TASK_QUEUE_PREFIX = "celery-results.task."
#: How many failures each reader describes in full (the rest are only counted).
EXAMPLES = 5


# -- broker and worker -----------------------------------------------------------------------


def task_queues(vhost: str) -> List[str]:
    """Names of the result queues (``celery-results.task.*``) in ``vhost``."""
    out = rabbitmqctl("list_queues", "-q", "-p", vhost, "name")
    return [name for name in (line.strip() for line in out.splitlines())
            if name.startswith(TASK_QUEUE_PREFIX)]


def warm_up(app: Celery) -> None:
    """A few add(1, 1) on the ready worker; their results are forgotten (N queues stay N)."""
    add = app.tasks["bench.add"]
    for _ in range(4):
        result = add.delay(1, 1)
        if result.get(timeout=30) != 2:
            raise RuntimeError("warm-up add(1, 1) returned a wrong value")
        result.forget()


# -- running the tasks ---------------------------------------------------------------------


def run_tasks(app: Celery, count: int, chunk: int) -> Tuple[List[str], Dict[str, Any]]:
    """Send ``count`` add(i, ADDEND) tasks in groups of ``chunk``, join them all."""
    add = app.tasks["bench.add"]
    started = time.perf_counter()
    groups = []
    for first in range(0, count, chunk):
        indices = range(first, min(first + chunk, count))
        groups.append((indices, group(add.s(i, ADDEND) for i in indices).apply_async()))
    sent = time.perf_counter()
    timeout = max(300.0, count * 0.1)  # one deadline for the whole join
    deadline = time.monotonic() + timeout
    wrong = 0
    for indices, result in groups:
        values = result.get(timeout=max(deadline - time.monotonic(), 1.0))
        wrong += sum(1 for i, value in zip(indices, values) if value != i + ADDEND)
    done = time.perf_counter()
    ids = [child.id for _, result in groups for child in result.results]
    return ids, {"send_s": sent - started, "total_s": done - started, "join_wrong": wrong}


# -- readers ---------------------------------------------------------------------------------


def rss_kib(field: str = "VmRSS") -> int:
    """This process's resident set size now (VmRSS) or its peak (VmHWM), in KiB.

    The peak is VmHWM, not getrusage's ru_maxrss: on Linux ru_maxrss survives
    fork+exec, so a spawned reader would report its parent's peak.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return -1


def read_pass(app: Celery, ids: List[str], index: int, number: int, get_every: int,
              get_timeout: float, rss: Dict[str, int]) -> Dict[str, Any]:
    """Read every id once, in an order of this reader's and pass's own."""
    count = len(ids)
    order = list(range(count))
    random.Random(f"{index}-{number}").shuffle(order)
    tenth = max(1, count // 10)
    tally: Counter = Counter()
    spent = {"meta": 0.0, "get": 0.0}
    examples: List[str] = []
    started = time.perf_counter()
    for done, i in enumerate(order, 1):
        task_id, expected = ids[i], i + ADDEND
        via_get = (i + index) % get_every == 0
        kind = "get" if via_get else "meta"
        before = time.perf_counter()
        try:
            if via_get:
                value: Any = AsyncResult(task_id, app=app).get(timeout=get_timeout)
                status, read_id = states.SUCCESS, task_id
            else:
                meta = app.backend.get_task_meta(task_id, cache=False)
                status, value, read_id = meta["status"], meta.get("result"), meta.get("task_id")
        except Exception as exc:
            spent[kind] += time.perf_counter() - before
            tally[kind] += 1
            tally["lost"] += 1
            tally["errors"] += 1
            if len(examples) < EXAMPLES:
                examples.append(f"pass {number} {kind} {task_id}: {type(exc).__name__}: {exc}")
            continue
        spent[kind] += time.perf_counter() - before
        tally[kind] += 1
        if status != states.SUCCESS:
            tally["lost"] += 1
            if len(examples) < EXAMPLES:
                examples.append(f"pass {number} {kind} {task_id}: status {status}")
        elif value != expected:
            tally["mismatched"] += 1
            owner = value - ADDEND if isinstance(value, int) else -1
            if 0 <= owner < count and owner != i:
                tally["other_tasks_value"] += 1
            if len(examples) < EXAMPLES:
                examples.append(f"pass {number} {kind} {task_id}: {value!r}, "
                                f"expected {expected}")
        if read_id is not None and read_id != task_id:
            tally["wrong_task_id"] += 1
        if number == 1 and done == tenth:
            rss["after_10pct"] = rss_kib()
    elapsed = time.perf_counter() - started
    rss[f"end_pass{number}"] = rss_kib()
    return {"pass": number, "seconds": elapsed, "reads": count, "tally": dict(tally),
            "examples": examples,
            "meta_ms": 1000 * spent["meta"] / max(tally["meta"], 1),
            "get_ms": 1000 * spent["get"] / max(tally["get"], 1),
            "meta_reads": tally["meta"], "get_reads": tally["get"]}


def reader_main(index: int, url: str, ids: List[str], get_every: int, get_timeout: float,
                barrier: Any, out: Any) -> None:
    """One reader process: two full passes over ``ids``; its report goes to ``out``."""
    report: Dict[str, Any] = {"index": index, "pid": os.getpid()}
    app: Optional[Celery] = None
    try:
        app = make_app(url, url)
        app.backend  # noqa: B018  (build the backend before the baseline RSS)
        rss = {"before": rss_kib()}
        report["rss_kib"] = rss
        barrier.wait()
        report["passes"] = [read_pass(app, ids, index, number, get_every, get_timeout, rss)
                            for number in (1, 2)]
        report["peak_kib"] = rss_kib("VmHWM")
        report["ru_maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except BaseException:
        report["error"] = traceback.format_exc()
        try:
            barrier.abort()  # never leave the others waiting for this one
        except Exception:
            pass
    finally:
        if app is not None:
            close_app(app)
        out.put(report)


def run_readers(url: str, ids: List[str], readers: int, get_every: int,
                get_timeout: float) -> Tuple[List[Dict[str, Any]], float]:
    """Start the readers, release them together, collect their reports; wall seconds."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(readers + 1, timeout=180)
    out = ctx.Queue()
    procs = [ctx.Process(target=reader_main, name=f"reader-{index}",
                         args=(index, url, ids, get_every, get_timeout, barrier, out))
             for index in range(readers)]
    for proc in procs:
        proc.start()
    reports: List[Dict[str, Any]] = []
    try:
        try:
            barrier.wait()
        except Exception:  # a reader failed before reading; its report says why
            pass
        started = time.perf_counter()
        limit = max(600.0, len(ids) * 0.2)
        deadline = time.monotonic() + limit
        while len(reports) < readers:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"readers did not finish within {limit:g} s")
            try:
                reports.append(out.get(timeout=min(left, 5.0)))
            except Exception:  # queue.Empty: see whether a reader died without a report
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead and out.empty():
                    raise RuntimeError("reader(s) died without a report: " + ", ".join(
                        f"{p.name} exit {p.exitcode}" for p in dead)) from None
        wall = time.perf_counter() - started
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=10)
    return sorted(reports, key=lambda report: report["index"]), wall


# -- forgetting ------------------------------------------------------------------------------


def forget_all(app: Celery, ids: List[str]) -> float:
    started = time.perf_counter()
    for task_id in ids:
        AsyncResult(task_id, app=app).forget()
    return time.perf_counter() - started


# -- report ----------------------------------------------------------------------------------


def mib(kib: Optional[int]) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def row(label: str, value: Any) -> None:
    print(f"{label:<30} {value}")


def print_summary(args: argparse.Namespace, vhost: str, run: Dict[str, Any],
                  reports: List[Dict[str, Any]], wall: float, before: List[str],
                  ids: List[str], forget_s: float, after: List[str]) -> Tuple[int, int, int]:
    count = len(ids)
    totals: Counter = Counter()
    for report in reports:
        for result in report.get("passes", []):
            totals.update(result["tally"])
    crashed = [r for r in reports if "error" in r]
    mine = set(ids)
    print("\n== summary ==")
    row("vhost", vhost)
    row("results N", count)
    row("readers R", f"{args.readers} (spawn), 2 passes each, 1 id in {args.get_every} via "
         "AsyncResult.get(), the rest get_task_meta(cache=False)")
    row(f"send {count} tasks", f"{run['send_s']:.2f} s")
    row("run + join all tasks", f"{run['total_s']:.2f} s ({count / run['total_s']:.0f} "
         f"tasks/s end to end); wrong values in the join: {run['join_wrong']}")
    row("result queues before forget", f"{len(before)} (of the N ids: "
         f"{len(mine.intersection(q[len(TASK_QUEUE_PREFIX):] for q in before))})")
    row("forget all N", f"{forget_s:.2f} s ({count / max(forget_s, 1e-9):.0f}/s)")
    row("result queues after forget", len(after))
    print("\nper reader (reads/s; mean ms per read by kind; RSS MiB: before reading, after 10 % "
          "of pass 1, end of pass 1, end of pass 2, peak VmHWM)")
    header = (f"{'reader':>6} {'pass1/s':>8} {'pass2/s':>8} {'meta ms':>8} {'get ms':>7} "
              f"{'lost':>5} {'mism':>5} {'rss0':>6} {'rss10%':>7} {'end1':>6} {'end2':>6} "
              f"{'peak':>6}")
    print(header)
    print("-" * len(header))
    sums = [0.0, 0.0]
    for report in reports:
        if "error" in report:
            print(f"{report['index']:>6} crashed: {report['error'].strip().splitlines()[-1]}")
            continue
        passes = report["passes"]
        rates = [p["reads"] / p["seconds"] for p in passes]
        sums = [s + r for s, r in zip(sums, rates)]
        meta_ms = sum(p["meta_ms"] * p["meta_reads"] for p in passes) / max(
            sum(p["meta_reads"] for p in passes), 1)
        get_ms = sum(p["get_ms"] * p["get_reads"] for p in passes) / max(
            sum(p["get_reads"] for p in passes), 1)
        lost = sum(p["tally"].get("lost", 0) for p in passes)
        mism = sum(p["tally"].get("mismatched", 0) for p in passes)
        rss = report["rss_kib"]
        print(f"{report['index']:>6} {rates[0]:>8.0f} {rates[1]:>8.0f} {meta_ms:>8.2f} "
              f"{get_ms:>7.2f} {lost:>5} {mism:>5} {mib(rss.get('before')):>6} "
              f"{mib(rss.get('after_10pct')):>7} {mib(rss.get('end_pass1')):>6} "
              f"{mib(rss.get('end_pass2')):>6} {mib(report.get('peak_kib')):>6}")
    total_reads = sum(p["reads"] for r in reports for p in r.get("passes", []))
    print()
    row("reads/s, sum over readers", f"pass 1 {sums[0]:.0f}, pass 2 {sums[1]:.0f}")
    row("reads/s, all readers at once", f"{total_reads / wall:.0f} ({total_reads} reads in "
         f"{wall:.1f} s wall)")
    row("reads lost (not SUCCESS)", f"{totals['lost']} (of which errors: {totals['errors']})")
    row("reads mismatched", f"{totals['mismatched']} (another task's value: "
         f"{totals['other_tasks_value']}; meta naming another task id: "
         f"{totals['wrong_task_id']})")
    row("readers crashed", len(crashed))
    row("main process RSS at spawn", f"{mib(run['main_rss_kib'])} MiB (readers' ru_maxrss: "
        + ", ".join(mib(r.get("ru_maxrss_kib")) for r in reports)
        + " MiB; it counts the parent's peak, hence VmHWM above)")
    for report in reports:
        for result in report.get("passes", []):
            for line in result["examples"]:
                print(f"  reader {report['index']}: {line}")
        if "error" in report:
            print(f"  reader {report['index']} traceback:\n{report['error']}")
    lost = totals["lost"] + (count * 2 * len(crashed))  # a crashed reader read nothing sure
    return lost, totals["mismatched"] + run["join_wrong"], len(after)


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=10_000, help="tasks / results N")
    parser.add_argument("--readers", type=int, default=4, help="reader processes R")
    parser.add_argument("--get-every", type=int, default=5,
                        help="read 1 id in this many with AsyncResult.get() (default 5)")
    parser.add_argument("--get-timeout", type=float, default=30.0,
                        help="timeout of each AsyncResult.get(), s")
    parser.add_argument("--chunk", type=int, default=1000, help="tasks per group sent")
    args = parser.parse_args(argv)
    if args.results < 1 or args.readers < 1 or args.get_every < 1 or args.chunk < 1:
        parser.error("--results, --readers, --get-every and --chunk must be at least 1")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    vhost = f"car-load-{uuid.uuid4().hex[:8]}"
    url = amqp_url(vhost)
    log_path = Path(tempfile.gettempdir()) / f"{vhost}-worker.log"
    created = False
    worker: Optional[subprocess.Popen] = None
    app: Optional[Celery] = None
    started = time.perf_counter()
    try:
        rabbitmqctl("add_vhost", vhost)
        created = True
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        app = make_app(url, url)
        print(f"vhost {vhost}; worker log {log_path}", flush=True)
        worker = start_worker(url, url, log_path, f"load-{os.getpid()}@%h")
        wait_for_ping(app, worker)
        warm_up(app)
        print(f"worker ready; sending {args.results} tasks", flush=True)
        ids, run = run_tasks(app, args.results, args.chunk)
        print(f"all {len(ids)} tasks done in {run['total_s']:.1f} s", flush=True)
        before = task_queues(vhost)
        run["main_rss_kib"] = rss_kib()
        print(f"{len(before)} result queues; starting {args.readers} readers", flush=True)
        reports, wall = run_readers(url, ids, args.readers, args.get_every, args.get_timeout)
        print(f"readers done in {wall:.1f} s; forgetting {len(ids)} results", flush=True)
        forget_s = forget_all(app, ids)
        after = task_queues(vhost)
        lost, mismatched, left = print_summary(args, vhost, run, reports, wall, before, ids,
                                               forget_s, after)
    finally:
        if worker is not None:
            stop_worker(worker)
        if app is not None:
            close_app(app)
        if created:
            delete_vhost(vhost)
    ok = lost == mismatched == left == 0
    print(f"\ntotal {time.perf_counter() - started:.1f} s; "
          f"{'OK' if ok else 'FAILED'} (lost {lost}, mismatched {mismatched}, "
          f"queues left {left})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
