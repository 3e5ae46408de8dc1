"""Concurrency at a modest scale (the long versions live in benchmarks/)."""
from __future__ import annotations

import multiprocessing
import uuid
from typing import Dict, List

from celery import Celery, group, states

from tests import broker


def _poll(url: str, task_id: str, polls: int, out) -> None:
    app = Celery("poller", broker=url, backend=url)
    wrong = sum(app.backend.get_task_meta(task_id, cache=False)["status"] != states.SUCCESS
                for _ in range(polls))
    app.backend.close()
    out.put(wrong)


def test_concurrent_polls_of_a_finished_task_never_say_pending(app, url) -> None:
    """SPEC §6 caveat: a reader holding the peeked message must not make others see
    PENDING.  4 processes x 300 polls of one finished task: 0 wrong answers."""
    task_id = str(uuid.uuid4())
    app.backend.mark_as_done(task_id, "done")
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    procs = [context.Process(target=_poll, args=(url, task_id, 300, out)) for _ in range(4)]
    for proc in procs:
        proc.start()
    wrong = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(30)
    assert wrong == [0, 0, 0, 0]


def _read_all(url: str, expected: Dict[str, int], out) -> None:
    app = Celery("reader", broker=url, backend=url)
    lost = differ = 0
    for task_id, value in expected.items():
        meta = app.backend.get_task_meta(task_id, cache=False)
        if meta["status"] != states.SUCCESS:
            lost += 1
        elif meta["result"] != value:
            differ += 1
    app.backend.close()
    out.put((lost, differ))


def test_1000_worker_results_read_by_4_clients_then_forgotten(worker, url, vhost) -> None:
    from tests import tasks_app

    result = group(tasks_app.add.s(i, 1000) for i in range(1000)).delay()
    values: List[int] = result.get(timeout=120)
    assert values == [i + 1000 for i in range(1000)]
    expected = {r.id: i + 1000 for i, r in enumerate(result.results)}
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    procs = [context.Process(target=_read_all, args=(url, expected, out)) for _ in range(4)]
    for proc in procs:
        proc.start()
    counts = [out.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(30)
    assert counts == [(0, 0)] * 4, "(lost, read as a different value) per client"
    for child in result.results:
        child.forget()
    left = {q["name"] for q in broker.queues(vhost)} & {
        f"celery-results.task.{task_id}" for task_id in expected}
    assert not left, f"{len(left)} result queues left after forget()"
