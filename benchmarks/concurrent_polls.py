"""Count wrong PENDING answers: N processes polling one finished task M times each.

SPEC section 6 caveat: while one reader holds the peeked message (between its
basic.get and its requeue), another basic.get finds the queue empty.  The
backend retries for ``amqp_results_peek_grace`` seconds when the queue exists;
this script counts how often a reader is still told PENDING.

    python benchmarks/concurrent_polls.py [--procs 4] [--polls 1000] [--grace 0.05]
"""
from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import time
import uuid

from celery import Celery


def poll(url: str, task_id: str, polls: int, grace: float, out) -> None:
    app = Celery("poller", broker=url, backend=url)
    app.conf.amqp_results_peek_grace = grace
    backend = app.backend
    wrong = 0
    started = time.perf_counter()
    for _ in range(polls):
        if backend.get_task_meta(task_id, cache=False)["status"] != "SUCCESS":
            wrong += 1
    out.put((wrong, polls / (time.perf_counter() - started)))
    backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--polls", type=int, default=1000)
    parser.add_argument("--grace", type=float, default=0.5)
    args = parser.parse_args()
    vhost = f"car-bench-{uuid.uuid4().hex[:8]}"
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                   check=True, capture_output=True)
    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    try:
        app = Celery("setup", broker=url, backend=url)
        task_id = str(uuid.uuid4())
        app.backend.mark_as_done(task_id, "done")
        app.backend.close()
        ctx = multiprocessing.get_context("spawn")
        out = ctx.Queue()
        procs = [ctx.Process(target=poll, args=(url, task_id, args.polls, args.grace, out))
                 for _ in range(args.procs)]
        for p in procs:
            p.start()
        results = [out.get(timeout=600) for _ in procs]
        for p in procs:
            p.join()
        wrong = sum(r[0] for r in results)
        rate = sum(r[1] for r in results)
        print(f"{args.procs} processes x {args.polls} polls, grace {args.grace}s: "
              f"{wrong} wrong PENDING answers, {rate:.0f} polls/s in total")
    finally:
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True)


if __name__ == "__main__":
    main()
