"""1000 concurrent awaits in one event loop with ``celery_amqp_results.aio.AsyncResults``.

Measures, on a fresh vhost of the local RabbitMQ:

* finished: N ``get()`` awaits of results already stored (one peek each), wall time;
  beside it the same N reads through ``loop.run_in_executor`` with the synchronous
  ``AsyncResult.get`` (what a web app does without an asyncio API);
* pending: N ``get()`` awaits started before their results exist: the time until all
  are armed (bound and peeked), then the results are stored by 4 threads and each
  await's wake-up delay (store confirmed -> await returned) is measured, p50/p99.

    python benchmarks/asyncio_awaits.py [--n 1000]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List

from celery import Celery
from harness import amqp_url, close_app, delete_vhost, rabbitmqctl

from celery_amqp_results.aio import AsyncResults


def make_app(url: str, **conf: object) -> Celery:
    app = Celery("bench-aio", broker=url, backend=url, set_as_current=False)
    app.conf.update(**conf)
    return app


def store_all(app: Celery, values: Dict[str, int], stored_at: Dict[str, float],
              threads: int = 4) -> None:
    """Store every result from ``threads`` threads; note when each store was confirmed."""
    ids = list(values)
    lock = threading.Lock()

    def store(chunk: List[str]) -> None:
        for task_id in chunk:
            app.backend.mark_as_done(task_id, values[task_id])
            with lock:
                stored_at[task_id] = time.monotonic()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(store, [ids[i::threads] for i in range(threads)]))


async def finished(results: AsyncResults, ids: List[str]) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(results.get(task_id, timeout=120) for task_id in ids))
    return time.perf_counter() - started


async def finished_in_executor(app: Celery, ids: List[str]) -> float:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    await asyncio.gather(*(loop.run_in_executor(None, lambda t=task_id:
                                                app.AsyncResult(t).get(timeout=120))
                           for task_id in ids))
    return time.perf_counter() - started


async def pending(results: AsyncResults, writer: Celery, n: int) -> Dict[str, float]:
    values = {str(uuid.uuid4()): index for index in range(n)}
    done_at: Dict[str, float] = {}
    stored_at: Dict[str, float] = {}

    async def one(task_id: str) -> None:
        assert await results.get(task_id, timeout=300) == values[task_id]
        done_at[task_id] = time.monotonic()

    started = time.perf_counter()
    waits = [asyncio.ensure_future(one(task_id)) for task_id in values]
    while True:  # armed: every id bound on the shared waiter queue
        link = results._hub._link
        if link is not None:
            await link.settled()
            if len(link.bound()) == n:
                break
        await asyncio.sleep(0.005)
    armed = time.perf_counter() - started
    loop = asyncio.get_running_loop()
    store_started = time.monotonic()
    await loop.run_in_executor(None, store_all, writer, values, stored_at)
    await asyncio.gather(*waits)
    delays = sorted(done_at[t] - stored_at[t] for t in values)
    return {
        "armed_s": armed,
        "stored_to_all_done_s": max(done_at.values()) - store_started,
        "wake_p50_ms": 1000 * statistics.median(delays),
        "wake_p99_ms": 1000 * delays[int(0.99 * (len(delays) - 1))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    vhost = f"car-bench-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    url = amqp_url(vhost)
    reader, writer = make_app(url), make_app(url, result_persistent=False)
    try:
        values = {str(uuid.uuid4()): index for index in range(args.n)}
        store_all(writer, values, {})
        ids = list(values)

        async def run() -> Dict[str, float]:
            async with AsyncResults(reader) as results:
                await results.get_meta(ids[0])  # connect first: not part of the figures
                figures = {"finished_s": await finished(results, ids)}
                figures["finished_in_executor_s"] = await finished_in_executor(reader, ids)
                figures.update(await pending(results, writer, args.n))
                return figures

        figures = asyncio.run(run())
        print(f"n={args.n} awaits in one event loop, one connection")
        print(f"  finished results:   {figures['finished_s']:.2f} s with AsyncResults.get, "
              f"{figures['finished_in_executor_s']:.2f} s with run_in_executor(get)")
        print(f"  pending results:    armed in {figures['armed_s']:.2f} s; all done "
              f"{figures['stored_to_all_done_s']:.2f} s after the stores began; "
              f"wake-up after store p50 {figures['wake_p50_ms']:.1f} ms, "
              f"p99 {figures['wake_p99_ms']:.1f} ms")
    finally:
        close_app(reader)
        close_app(writer)
        delete_vhost(vhost)


if __name__ == "__main__":
    main()
