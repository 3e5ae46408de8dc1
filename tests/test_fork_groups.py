"""After fork (prefork workers) and group records: save, restore, delete, reload."""
from __future__ import annotations

import multiprocessing
import time
import uuid

import pytest
from celery import states
from celery.result import GroupResult

from tests import broker


def new_id() -> str:
    return str(uuid.uuid4())


def _child(app, done_id: str, later_id: str, queue) -> None:
    try:
        value = app.AsyncResult(done_id).get(timeout=10)
        app.backend.mark_as_done(new_id(), "child stored")
        waited = app.AsyncResult(later_id).get(timeout=20)
        queue.put(("ok", value, waited))
    except BaseException as exc:  # reported to the parent
        queue.put(("error", repr(exc), None))


def test_backend_keeps_working_across_fork(app) -> None:
    backend = app.backend
    done_id, later_id = new_id(), new_id()
    backend.mark_as_done(done_id, "before fork")
    # The parent has a pooled connection and a waiter connection open now.
    assert app.AsyncResult(done_id).get(timeout=5) == "before fork"
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(app, done_id, later_id, queue))
    child.start()
    time.sleep(1.0)
    backend.mark_as_done(later_id, "after fork")
    outcome = queue.get(timeout=30)
    child.join(30)
    assert outcome == ("ok", "before fork", "after fork")
    assert child.exitcode == 0
    # The child dropped (did not close) the parent's connections: the parent still works.
    third = new_id()
    backend.mark_as_done(third, "parent again")
    assert app.AsyncResult(third).get(timeout=5) == "parent again"
    assert backend.get_task_meta(done_id, cache=False)["result"] == "before fork"


def test_group_save_restore_delete(app, url, vhost) -> None:
    from tests.conftest import make_app

    ids = [new_id() for _ in range(3)]
    for n, task_id in enumerate(ids):
        app.backend.mark_as_done(task_id, n)
    group = GroupResult(new_id(), [app.AsyncResult(i) for i in ids], app=app)
    group.save()
    other = make_app(url)
    try:
        restored = GroupResult.restore(group.id, app=other)
        assert restored is not None and restored.id == group.id
        assert [r.id for r in restored.results] == ids
        assert restored.join_native(timeout=5) == [0, 1, 2]
        # Restoring reads, never removes: restore again from a third place.
        assert other.backend.restore_group(group.id, cache=False).id == group.id
        group.delete()
        assert other.backend.restore_group(group.id, cache=False) is None
        queue_names = {q["name"] for q in broker.queues(vhost)}
        assert f"celery-results.group.{group.id}" not in queue_names
    finally:
        other.backend.close()


def test_reload_group_and_task_result(app) -> None:
    app.conf.result_cache_max = 100  # Celery's default (-1) caches nothing
    task_id = new_id()
    app.backend.store_result(task_id, None, states.STARTED)
    app.backend.reload_task_result(task_id)
    assert app.backend._cache[task_id]["status"] == states.STARTED
    app.backend.mark_as_done(task_id, 1)
    app.backend.reload_task_result(task_id)
    assert app.backend._cache[task_id]["result"] == 1
    group = GroupResult(new_id(), [app.AsyncResult(task_id)], app=app)
    app.backend.save_group(group.id, group)
    app.backend.reload_group_result(group.id)
    assert app.backend._cache[group.id]["result"].id == group.id


def test_bad_group_id(app) -> None:
    from celery_amqp_results import InvalidTaskIdError

    with pytest.raises(InvalidTaskIdError, match="group id"):
        app.backend.restore_group("")
