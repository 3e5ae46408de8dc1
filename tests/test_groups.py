"""Saved groups with a real worker: save in one process, restore and join in another, expire."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import pytest
from celery import group
from celery.result import GroupResult

from tests import broker
from tests.conftest import ROOT, make_app


@pytest.fixture(scope="module")
def t(worker: Any) -> Any:
    from tests import tasks_app
    return tasks_app


RESTORE = """
import json, sys
from celery.result import GroupResult
from tests.tasks_app import app
restored = GroupResult.restore(sys.argv[1], app=app)
if restored is None:
    print(json.dumps(None))
else:
    print(json.dumps({"ids": [r.id for r in restored.results],
                      "values": restored.join_native(timeout=30),
                      "again": restored.get(timeout=30)}))
"""


def restore_in_another_process(url: str, group_id: str) -> Any:
    env = dict(os.environ, CAR_TEST_URL=url, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", RESTORE, group_id], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_group_saved_here_joins_in_another_process(t: Any, url: str, vhost: str) -> None:
    result = group(t.add.s(i, i) for i in range(10)).apply_async()
    result.save()
    # Another process restores it (twice: reading never removes) and joins it
    # like the original, while or after the worker runs the tasks.
    for _ in range(2):
        seen = restore_in_another_process(url, result.id)
        assert seen["ids"] == [r.id for r in result.results]
        assert seen["values"] == seen["again"] == [2 * i for i in range(10)]
    assert result.get(timeout=30) == [2 * i for i in range(10)]
    result.delete()
    assert restore_in_another_process(url, result.id) is None
    assert not any(q["name"] == t.app.backend.names.group_queue(result.id)
                   for q in broker.queues(vhost))


def test_restored_group_reports_failures_like_the_original(t: Any, url: str) -> None:
    result = group([t.add.s(1, 1), t.fail.s("member broke")]).apply_async()
    result.save()
    # Both members finished first: get() raises as soon as the failure arrives, which
    # under load can be before the other member's state is stored (seen on a busy
    # machine: completed_count() 0).
    result.join_native(timeout=30, propagate=False)
    reader = make_app(url)
    try:
        restored = GroupResult.restore(result.id, app=reader)
        with pytest.raises(ValueError, match="member broke"):
            restored.get(timeout=30)
        assert restored.completed_count() == 1
        assert [r.state for r in restored.results] == ["SUCCESS", "FAILURE"]
    finally:
        reader.backend.close()


def test_group_record_queue_carries_result_expires(t: Any, url: str, vhost: str) -> None:
    """A saved group's queue expires like a result's (x-expires = result_expires in ms).

    A long expiry, so the queue is still there when rabbitmqctl lists it."""
    app = make_app(url, result_expires=60)
    try:
        result = GroupResult("kept-" + os.urandom(6).hex(),
                             [app.AsyncResult(r.id) for r in
                              group(t.add.s(1, 2)).apply_async().results], app=app)
        result.save()
        queue = broker.queue(vhost, app.backend.names.group_queue(result.id))
        assert queue["arguments"]["x-expires"] == 60_000
        assert GroupResult.restore(result.id, app=app) is not None
    finally:
        app.backend.close()


def test_group_records_expire_like_results(t: Any, url: str, vhost: str) -> None:
    """Once result_expires has passed, a saved group is gone (nothing reads it before)."""
    short = make_app(url, result_expires=1)
    try:
        result = GroupResult(
            "expiring-" + os.urandom(6).hex(),
            [short.AsyncResult(r.id) for r in group(t.add.s(1, 2)).apply_async().results],
            app=short)
        result.save()
        time.sleep(1.3)
        assert short.backend.restore_group(result.id, cache=False) is None
    finally:
        short.backend.close()
