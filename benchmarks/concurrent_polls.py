"""Count wrong PENDING answers: N processes polling one finished task M times each.

SPEC section 6 caveat: while one reader holds the peeked message (between its
basic.get and its requeue), another basic.get finds the queue empty.  The
backend writes the requeue together with the get (read.py) and re-reads a queue
found empty up to ``amqp_results_peek_attempts`` times; this script counts how
often a reader is still told PENDING, optionally beside busy-loop processes that
load the machine's cores.

    python benchmarks/concurrent_polls.py [--procs 8] [--polls 1000] [--busy 2]
                                          [--attempts 64]
"""
from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import time
import uuid
from typing import Any, Dict, List, Optional

from celery import Celery


def count_empty_reads() -> Dict[str, int]:
    """Wrap read.get_and_requeue to count reads that found the queue empty.

    ``empty`` is every such read; ``longest`` the most a single peek needed in a row,
    which shows how far from ``amqp_results_peek_attempts`` the run came.
    """
    from celery_amqp_results import read

    counts = {"empty": 0, "run": 0, "longest": 0}
    original = read.get_and_requeue

    def counted(channel: Any, queue_name: str) -> Any:
        message = original(channel, queue_name)
        if message is None:
            counts["empty"] += 1
            counts["run"] += 1
            counts["longest"] = max(counts["longest"], counts["run"])
        else:
            counts["run"] = 0
        return message

    read.get_and_requeue = counted  # type: ignore[assignment]
    return counts


def poll(url: str, task_id: str, polls: int, attempts: Optional[int], out) -> None:
    counts = count_empty_reads()
    app = Celery("poller", broker=url, backend=url)
    if attempts is not None:
        app.conf.amqp_results_peek_attempts = attempts
    backend = app.backend
    wrong = 0
    started = time.perf_counter()
    for _ in range(polls):
        if backend.get_task_meta(task_id, cache=False)["status"] != "SUCCESS":
            wrong += 1
    out.put((wrong, polls / (time.perf_counter() - started), counts["empty"],
             counts["longest"]))
    backend.close()


def busy_loop() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=8)
    parser.add_argument("--polls", type=int, default=1000)
    parser.add_argument("--busy", type=int, default=0,
                        help="busy-loop processes to run beside the pollers")
    parser.add_argument("--attempts", type=int, default=None,
                        help="amqp_results_peek_attempts (default: the backend's)")
    args = parser.parse_args()
    vhost = f"car-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                   check=True, capture_output=True)
    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    ctx = multiprocessing.get_context("spawn")
    burners: List[multiprocessing.process.BaseProcess] = []
    try:
        app = Celery("setup", broker=url, backend=url)
        task_id = str(uuid.uuid4())
        app.backend.mark_as_done(task_id, "done")
        app.backend.close()
        burners = [ctx.Process(target=busy_loop, daemon=True) for _ in range(args.busy)]
        for burner in burners:
            burner.start()
        out = ctx.Queue()
        procs = [ctx.Process(target=poll, args=(url, task_id, args.polls, args.attempts, out))
                 for _ in range(args.procs)]
        for p in procs:
            p.start()
        results = [out.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        wrong = sum(r[0] for r in results)
        rate = sum(r[1] for r in results)
        attempts = "default" if args.attempts is None else args.attempts
        print(f"{args.procs} processes x {args.polls} polls, {args.busy} busy loops beside, "
              f"peek attempts {attempts}: {wrong} wrong PENDING answers, "
              f"{rate:.0f} polls/s in total; reads that found the queue empty (held by "
              f"another reader) {sum(r[2] for r in results)}, at most "
              f"{max(r[3] for r in results)} in a row")
    finally:
        for burner in burners:
            burner.terminate()
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True)


if __name__ == "__main__":
    main()
