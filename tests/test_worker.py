"""End to end with a real Celery worker (prefork, 2 processes) on the test vhost."""
from __future__ import annotations

import subprocess
import sys
import time
from typing import Any, Dict, List

import pytest
from celery import states

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def tasks(worker):
    from tests import tasks_app
    return tasks_app


def test_plain_task_round_trip(tasks) -> None:
    result = tasks.add.delay(2, 3)
    assert result.get(timeout=30) == 5
    assert result.state == states.SUCCESS
    # Re-read as many times as we like.
    assert tasks.app.AsyncResult(result.id).get(timeout=5) == 5


def test_failing_task(tasks) -> None:
    result = tasks.fail.delay("it broke")
    with pytest.raises(ValueError, match="it broke"):
        result.get(timeout=30)
    assert result.state == states.FAILURE
    assert "ValueError" in result.traceback


def test_progress_states_reach_on_message(tasks) -> None:
    seen: List[Dict[str, Any]] = []
    result = tasks.progress.delay(20, 0.02)
    assert result.get(timeout=30, on_message=seen.append) == 20
    steps = [m["result"]["step"] for m in seen if m["status"] == "PROGRESS"]
    assert steps == sorted(steps) and steps, seen
    assert steps[-1] == 19
    assert seen[-1]["status"] == states.SUCCESS


def test_started_state_and_extended_metadata(tasks) -> None:
    result = tasks.sleep.delay(1.0)
    deadline = time.monotonic() + 20
    while result.state != states.STARTED and time.monotonic() < deadline:
        time.sleep(0.05)
    assert result.state == states.STARTED
    assert result.get(timeout=30) == 1.0
    meta = tasks.app.backend.get_task_meta(result.id, cache=False)
    assert meta["name"] == "tests.tasks_app.sleep"
    assert meta["args"] == [1.0] and meta["kwargs"] == {}
    assert meta["worker"].startswith("car-test-")
    assert meta["retries"] == 0 and meta["queue"] == "celery"
    assert meta["date_done"]


def test_chain_sets_parent_id(tasks) -> None:
    result = (tasks.add.s(1, 1) | tasks.add.s(10)).delay()
    assert result.get(timeout=30) == 12
    meta = tasks.app.backend.get_task_meta(result.id, cache=False)
    assert meta["parent_id"] == result.parent.id
    assert result.parent.get(timeout=5) == 2


def test_group_of_results_from_the_worker(tasks) -> None:
    from celery import group

    result = group(tasks.add.s(i, i) for i in range(20)).delay()
    assert result.get(timeout=60) == [2 * i for i in range(20)]
    meta = tasks.app.backend.get_task_meta(result.results[0].id, cache=False)
    assert meta["group_id"] == result.id


def test_chord_works_through_celery_unlock(tasks) -> None:
    """Native chords are a later issue; Celery's fallback must already work on top of us."""
    from celery import chord

    result = chord(tasks.add.s(i, 1) for i in range(4))(tasks.total.s())
    assert result.get(timeout=60) == 10
    header = result.parent
    assert [r.state for r in header.results] == [states.SUCCESS] * 4
    assert header.get(timeout=5) == [1, 2, 3, 4]


READ_TWICE = """
import sys
from tests.tasks_app import app
for _ in range(2):
    r = app.AsyncResult(sys.argv[1])
    print(r.state, r.get(timeout=10))
"""


def test_results_read_from_two_other_processes(tasks, url) -> None:
    result = tasks.add.delay(20, 22)
    assert result.get(timeout=30) == 42
    env = {"CAR_TEST_URL": url, "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", READ_TWICE, result.id], env=env,
                             cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
        assert out.stdout.split("\n")[:2] == ["SUCCESS 42", "SUCCESS 42"]


def test_children_are_recorded(tasks) -> None:
    result = tasks.spawn.delay(3)
    assert result.get(timeout=30) == 3
    children = tasks.app.AsyncResult(result.id).children
    assert len(children) == 3
    assert sorted(child.get(timeout=30) for child in children) == [0, 2, 4]


def test_oversized_result_fails_the_task_with_a_clear_error(tasks) -> None:
    from celery_amqp_results import ResultTooLargeError

    result = tasks.big.delay(2_000_000)
    with pytest.raises(ResultTooLargeError, match="amqp_results_max_result_size"):
        result.get(timeout=30)
    assert result.state == states.FAILURE
    assert result.id in str(result.result)
    assert tasks.big.delay(1000).get(timeout=30) == "x" * 1000
