"""Native chords with a real prefork worker: no chord_unlock, the body runs once, errors as Redis.

The worker fixture runs tests/tasks_app.py (2 processes); every chord here goes
through the backend's apply_chord / on_chord_part_return, never chord_unlock.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List

import pytest
from celery import chain, chord, group
from celery.exceptions import ChordError
from celery.result import AsyncResult, GroupResult

from tests import broker


@pytest.fixture(scope="module")
def t(worker: Any) -> Any:
    """tests/tasks_app.py, imported once the worker fixture has pointed it at the vhost."""
    from tests import tasks_app
    return tasks_app


def chord_queues(t: Any, vhost: str) -> List[str]:
    prefix = t.app.backend.names.chord_prefix
    size_prefix = t.app.backend.names.chord_size_prefix
    return [q["name"] for q in broker.queues(vhost)
            if q["name"].startswith((prefix, size_prefix))]


def lines(path: Path, at_least: int = 1, wait: float = 15.0) -> List[str]:
    """The lines of ``path`` once it has ``at_least`` of them (and a moment more)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= at_least:
            break
        time.sleep(0.05)
    time.sleep(0.5)  # a second run of the body would show up by now
    return path.read_text().splitlines() if path.exists() else []


def test_chord_runs_its_body_with_the_header_values_in_order(t: Any, vhost: str) -> None:
    # Later header tasks finish first: the body still gets header order.
    header = [t.slow_add.s(i, i, 0.02 * (10 - i)) for i in range(10)]
    result = chord(header, t.collect.s()).apply_async()
    assert result.get(timeout=30) == [2 * i for i in range(10)]
    # The header results stay readable by anyone, and the chord's queues are gone.
    parent = result.parent
    assert [AsyncResult(r.id, app=t.app).get(timeout=5) for r in parent.results] == \
        [2 * i for i in range(10)]
    assert chord_queues(t, vhost) == []


def test_no_chord_unlock_task_is_sent(t: Any, vhost: str) -> None:
    # chord_unlock would be a task message on the worker's queue, retried every second.
    sent: List[str] = []

    from celery.signals import before_task_publish

    def record(sender: str = "", **kwargs: Any) -> None:
        sent.append(sender)

    before_task_publish.connect(record, weak=False)
    try:
        assert chord([t.add.s(1, 1), t.add.s(2, 2)], t.collect.s()).apply_async().get(
            timeout=30) == [2, 4]
    finally:
        before_task_publish.disconnect(record)
    assert "celery.chord_unlock" not in sent
    assert sent.count("tests.tasks_app.add") == 2


def test_body_runs_exactly_once_when_parts_finish_together(t: Any, tmp_path: Path) -> None:
    for run in range(3):
        path = tmp_path / f"body-{run}.log"
        header = [t.add.s(i, 0) for i in range(40)]
        result = chord(header, t.log_run.s(str(path))).apply_async()
        assert result.get(timeout=60) == list(range(40))
        assert len(lines(path)) == 1


def test_single_task_header_and_empty_header(t: Any) -> None:
    assert chord([t.add.s(2, 3)], t.collect.s()).apply_async().get(timeout=30) == [5]
    assert chord([], t.collect.s()).apply_async().get(timeout=30) == []


def test_failing_header_task_fails_the_chord_and_runs_link_error(t: Any, tmp_path: Path) -> None:
    errors = tmp_path / "errors.log"
    header = [t.add.s(1, 1), t.fail.s("header broke"), t.add.s(2, 2)]
    body = t.collect.s().on_error(t.log_error.s(path=str(errors)))
    result = chord(header, body).apply_async()
    # result.get() would raise the header task's own ValueError first: Celery
    # checks a result's parents.  The body's result holds the ChordError.
    with pytest.raises(ValueError, match="header broke"):
        result.get(timeout=30)
    with pytest.raises(ChordError) as info:
        AsyncResult(result.id, app=t.app).get(timeout=30)
    failed_id = result.parent.results[1].id
    assert f"Dependency {failed_id} raised" in str(info.value)
    assert "header broke" in str(info.value)
    assert result.state == "FAILURE"
    # link_error ran (once), for the body's id.
    assert lines(errors) == [result.id]
    # Header results stay readable: state, result and traceback of the failure.
    failed = AsyncResult(failed_id, app=t.app)
    assert failed.state == "FAILURE"
    assert isinstance(failed.result, ValueError) and "header broke" in str(failed.result)
    assert "ValueError" in failed.traceback
    assert AsyncResult(result.parent.results[0].id, app=t.app).get(timeout=5) == 2


def test_failing_body_fails_the_chord_result(t: Any) -> None:
    result = chord([t.add.s(1, 1), t.add.s(2, 2)], t.fail.si("body broke")).apply_async()
    with pytest.raises(ValueError, match="body broke"):
        result.get(timeout=30)
    assert result.state == "FAILURE"
    assert [r.get(timeout=5) for r in result.parent.results] == [2, 4]


def test_redelivered_header_task_counts_once(t: Any, tmp_path: Path) -> None:
    # t.die_once kills its worker process after its part was recorded and before
    # its message was acknowledged: the broker redelivers it, it reports twice.
    marker = tmp_path / "died"
    runs = tmp_path / "body.log"
    header = [t.slow_add.s(1, 1, 1.0), t.die_once.s(7, str(marker)), t.slow_add.s(2, 2, 1.5)]
    result = chord(header, t.log_run.s(str(runs))).apply_async()
    assert result.get(timeout=60) == [2, 7, 4]
    assert marker.exists()  # it did die once
    assert len(lines(runs)) == 1


def test_add_to_chord_makes_the_body_wait(t: Any) -> None:
    result = chord([t.add.s(1, 1), t.add_more.s(3)], t.collect.s()).apply_async()
    values = result.get(timeout=30)
    assert sorted(values) == sorted([2, -3, 100, 101, 102])
    assert values[0] == 2  # header order first; added tasks share their adder's index


def test_replace_inside_a_chord(t: Any) -> None:
    result = chord([t.add.s(1, 1), t.replace_with.s(5)], t.collect.s()).apply_async()
    assert result.get(timeout=30) == [2, 1005]


def test_replace_with_a_group_inside_a_chord(t: Any) -> None:
    result = chord([t.add.s(1, 1), t.replace_with.s(5, as_group=True)], t.collect.s()).apply_async()
    first, replaced = result.get(timeout=30)
    # The header keeps its order; the order inside the replacing group (Celery turns it
    # into a chord of its own) is not pinned: CI once saw [7, 6] on Celery 5.3.
    assert first == 2 and sorted(replaced) == [6, 7]


def test_chain_inside_a_chord_header(t: Any) -> None:
    header = [chain(t.add.s(1, 1), t.add.s(10)), t.add.s(3, 3)]
    assert chord(header, t.collect.s()).apply_async().get(timeout=30) == [12, 6]


def test_chord_inside_a_chain(t: Any) -> None:
    workflow = chain(t.add.s(1, 1), chord([t.add.s(10), t.add.s(20)], t.collect.s()), t.collect.s())
    assert workflow.apply_async().get(timeout=30) == [12, 22]


def test_group_as_chord_body(t: Any) -> None:
    body = group(t.collect.s(), t.collect.s())
    result = chord([t.add.s(1, 1), t.add.s(2, 2)], body).apply_async()
    assert result.get(timeout=30) == [[2, 4], [2, 4]]


def test_chord_of_chords(t: Any) -> None:
    inner_a = chord([t.add.s(1, 1), t.add.s(2, 2)], t.collect.s())
    inner_b = chord([t.add.s(3, 3)], t.collect.s())
    result = chord([inner_a, inner_b], t.collect.s()).apply_async()
    assert result.get(timeout=30) == [[2, 4], [6]]


def test_group_inside_a_chord_header(t: Any) -> None:
    header = [group(t.add.s(1, 1), t.add.s(2, 2)), t.add.s(3, 3)]
    result = chord(header, t.collect.s()).apply_async()
    values = result.get(timeout=30)
    # Celery flattens a nested group into the header (in its own order, which
    # reverses the inner group): the body gets the header's order.
    assert values == [r.get(timeout=5) for r in result.parent.results]
    assert sorted(values) == [2, 4, 6]


def test_unordered_chord_gives_every_value(t: Any, url: str) -> None:
    from tests.conftest import make_app

    other = make_app(url, result_backend_transport_options={"result_chord_ordered": False})
    try:
        header = [t.slow_add.s(i, 0, 0.05 * (4 - i)) for i in range(5)]
        sig = chord(header, t.collect.s(), app=other)
        values = sig.apply_async().get(timeout=30)
        assert sorted(values) == list(range(5))
    finally:
        other.backend.close()


def test_chord_of_1000_tasks(t: Any, vhost: str) -> None:
    result = chord([t.add.s(i, 1) for i in range(1000)], t.collect.s()).apply_async()
    assert result.get(timeout=120) == [i + 1 for i in range(1000)]
    assert chord_queues(t, vhost) == []


def test_header_results_readable_from_another_app_after_the_chord(t: Any, url: str) -> None:
    from tests.conftest import make_app

    result = chord([t.add.s(4, 4), t.add.s(5, 5)], t.collect.s()).apply_async()
    assert result.get(timeout=30) == [8, 10]
    reader = make_app(url)
    try:
        for _ in range(2):
            assert [AsyncResult(r.id, app=reader).get(timeout=5)
                    for r in result.parent.results] == [8, 10]
        assert GroupResult(result.parent.id, result.parent.results, app=reader).get(
            timeout=5) == [8, 10]
    finally:
        reader.backend.close()


def test_part_after_the_chord_fired_is_ignored(t: Any, vhost: str, caplog: Any) -> None:
    result = chord([t.add.s(1, 1)], t.collect.s()).apply_async()
    assert result.get(timeout=30) == [2]
    header_id = result.parent.results[0].id

    class Request:
        id = header_id
        group = result.parent.id
        group_index = 0
        chord = t.collect.s()

    t.app.backend.on_chord_part_return(Request(), "SUCCESS", 2)
    assert "reported after the chord's body was sent" in caplog.text
    assert chord_queues(t, vhost) == []


def test_bad_chord_size_is_refused(t: Any) -> None:
    with pytest.raises(ValueError, match="chord size"):
        t.app.backend.set_chord_size(str(uuid.uuid4()), -1)


def test_add_to_a_finished_chord_is_an_error(t: Any) -> None:
    with pytest.raises(ChordError, match="cannot add task"):
        t.app.backend.add_to_chord(
            str(uuid.uuid4()), AsyncResult(str(uuid.uuid4()), app=t.app))


@pytest.mark.skipif(os.environ.get("CAR_SKIP_SLOW") == "1", reason="slow")
def test_many_small_chords_at_once(t: Any) -> None:
    results = [chord([t.add.s(i, j) for j in range(5)], t.collect.s()).apply_async()
               for i in range(20)]
    for i, result in enumerate(results):
        assert result.get(timeout=60) == [i + j for j in range(5)]


def _report_parts(url: str, group_id: str, parts: List[int], body: Dict[str, Any],
                  start: float) -> None:
    """In a child process: report ``parts`` of a chord, all at about the same instant."""
    from celery import signature

    from tests.conftest import make_app

    reporter = make_app(url)
    callback = signature(body, app=reporter)

    class Request:
        group = group_id
        chord = callback

    time.sleep(max(0.0, start - time.time()))
    for index in parts:
        request = Request()
        request.id, request.group_index = f"{group_id}-part-{index}", index
        reporter.backend.on_chord_part_return(request, "SUCCESS", index)
    reporter.backend.close()


def test_concurrent_and_duplicate_reports_send_the_body_once(url: str, vhost: str) -> None:
    """4 processes report 30 parts at the same instant, each part twice: one body per chord."""
    import multiprocessing

    from celery import signature

    from tests.conftest import make_app

    client = make_app(url)
    body_queue = f"chord-bodies-{uuid.uuid4().hex[:8]}"
    context = multiprocessing.get_context("fork")
    size = 30
    for _ in range(5):
        group_id = str(uuid.uuid4())
        body = signature("tests.never_run", app=client, queue=body_queue)
        header = GroupResult(group_id, [AsyncResult(f"{group_id}-part-{i}", app=client)
                                        for i in range(size)], app=client)
        client.backend.apply_chord((group_id, header.results), body)
        client.backend.set_chord_size(group_id, size)
        # Every part is reported by two processes: a duplicate, as a redelivery makes.
        shares = [list(range(0, size, 2)), list(range(1, size, 2))] * 2
        start = time.time() + 0.5
        procs = [context.Process(target=_report_parts,
                                 args=(url, group_id, share, dict(body), start))
                 for share in shares]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(60)
            assert proc.exitcode == 0
    client.backend.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if broker.queue(vhost, body_queue)["messages"] >= 5:
            break
        time.sleep(0.1)
    time.sleep(0.5)
    assert broker.queue(vhost, body_queue)["messages"] == 5
    assert [name for name in (q["name"] for q in broker.queues(vhost))
            if name.startswith("celery-results.chord")] == []


class _Part:
    """The request fields on_chord_part_return reads, for a part reported by hand."""

    def __init__(self, group_id: str, index: int, chord: Any) -> None:
        self.id, self.group, self.group_index, self.chord = \
            f"{group_id}-part-{index}", group_id, index, chord


def _chord_by_hand(app: Any, size: int, body_queue: str) -> Any:
    from celery import signature

    group_id = str(uuid.uuid4())
    body = signature("tests.never_run", app=app, queue=body_queue)
    results = [AsyncResult(f"{group_id}-part-{i}", app=app) for i in range(size)]
    app.backend.apply_chord((group_id, results), body)
    app.backend.set_chord_size(group_id, size)
    return group_id, body


def test_only_one_process_holds_a_chord_log(url: str) -> None:
    from tests.conftest import make_app

    client = make_app(url)
    try:
        group_id, _ = _chord_by_hand(client, 2, f"chord-bodies-{uuid.uuid4().hex[:8]}")
        log = client.backend._chords.log
        first = log.take(group_id, 1)
        assert first is not None and len(first.messages) == 1  # the opening entry
        assert log.take(group_id, 1) is None  # refused while the first holds it
        assert first.release() == 1
        again = log.take(group_id, 1)
        assert again is not None
        again.finish()
        assert log.take(group_id, 1) is None  # gone
    finally:
        client.backend.close()


def test_last_part_reported_while_another_holds_the_log_is_not_missed(
        url: str, vhost: str) -> None:
    """The holder counts again after letting go: a part refused meanwhile still fires."""
    import threading

    from tests.conftest import make_app

    client = make_app(url)
    body_queue = f"chord-bodies-{uuid.uuid4().hex[:8]}"
    try:
        group_id, body = _chord_by_hand(client, 3, body_queue)
        backend = client.backend
        backend.on_chord_part_return(_Part(group_id, 0, body), "SUCCESS", 0)
        backend.on_chord_part_return(_Part(group_id, 1, body), "SUCCESS", 1)
        log = backend._chords.log
        real_take = log.take
        interleaved: List[Any] = []

        def take_then_report_the_last_part(gid: str, expected: int) -> Any:
            holding = real_take(gid, expected)
            if not interleaved:
                # While this process holds the log, the last part arrives elsewhere
                # and cannot take the log: it leaves the chord to the holder.
                other = make_app(url)
                reporter = threading.Thread(target=other.backend.on_chord_part_return,
                                            args=(_Part(group_id, 2, body), "SUCCESS", 2))
                reporter.start()
                reporter.join(30)
                other.backend.close()
                interleaved.append(holding)
            return holding

        log.take = take_then_report_the_last_part  # type: ignore[method-assign]
        # A duplicate of part 1 makes this process read the log: it holds it when
        # part 2 is reported, finds the chord incomplete, and must count again.
        backend.on_chord_part_return(_Part(group_id, 1, body), "SUCCESS", 1)
        assert interleaved and interleaved[0] is not None
        assert broker.wait_for_messages(vhost, body_queue) == 1
    finally:
        client.backend.close()


def test_count_of_a_part_whose_get_overlaps_another_parts_count(
        url: str, vhost: str) -> None:
    """Two last parts whose counts overlap: the later count sees both (issue 3's window).

    Part A's process loses the CPU right after the broker answered the get with which
    it counts.  Part B appends and counts meanwhile.  A held the log's head until it
    got the CPU back and sent the requeue, so A counted before B's append and B
    counted one short: the chord never fired.  Now the requeue leaves with the get.
    """
    import threading

    from amqp.abstract_channel import AbstractChannel

    from tests.conftest import make_app

    client, other = make_app(url), make_app(url)
    body_queue = f"chord-bodies-{uuid.uuid4().hex[:8]}"
    wait = AbstractChannel.wait
    a_counted, b_done = threading.Event(), threading.Event()
    part_a = threading.current_thread()

    def wait_and_lose_the_cpu(self: Any, method: Any, *args: Any, **kwargs: Any) -> Any:
        reply = wait(self, method, *args, **kwargs)
        if threading.current_thread() is part_a and isinstance(reply, tuple) \
                and len(reply) == 6 and not a_counted.is_set():  # get-ok of the count
            a_counted.set()
            b_done.wait(30)  # descheduled until part B has reported
        return reply

    try:
        group_id, body = _chord_by_hand(client, 2, body_queue)

        def report_b() -> None:
            a_counted.wait(30)
            other.backend.on_chord_part_return(_Part(group_id, 1, body), "SUCCESS", 1)
            b_done.set()

        reporter = threading.Thread(target=report_b)
        reporter.start()
        AbstractChannel.wait = wait_and_lose_the_cpu  # type: ignore[method-assign]
        try:
            client.backend.on_chord_part_return(_Part(group_id, 0, body), "SUCCESS", 0)
        finally:
            AbstractChannel.wait = wait  # type: ignore[method-assign]
        reporter.join(30)
        assert a_counted.is_set() and b_done.is_set()
        assert broker.wait_for_messages(vhost, body_queue) == 1
    finally:
        client.backend.close()
        other.backend.close()


@pytest.mark.parametrize("ordered", [True, False])
def test_result_chord_ordered(url: str, vhost: str, ordered: bool) -> None:
    """Header order by default; finishing order with result_chord_ordered=False."""
    import json as jsonlib

    from tests.conftest import make_app

    client = make_app(url, result_backend_transport_options={"result_chord_ordered": ordered})
    body_queue = f"chord-bodies-{uuid.uuid4().hex[:8]}"
    try:
        group_id, body = _chord_by_hand(client, 4, body_queue)
        for index in (2, 0, 3, 1):  # the order the header tasks finish in
            client.backend.on_chord_part_return(
                _Part(group_id, index, body), "SUCCESS", f"value-{index}")
        with broker.RawBroker(vhost) as raw:
            message = raw.peek(body_queue)
        args, _, _ = jsonlib.loads(message.body)
        expected = [0, 1, 2, 3] if ordered else [2, 0, 3, 1]
        assert args == [[f"value-{i}" for i in expected]]
    finally:
        client.backend.close()


def test_chain_as_chord_body(t: Any) -> None:
    result = chord([t.add.s(1, 1), t.add.s(2, 2)], chain(t.collect.s(), t.collect.s()))
    assert result.apply_async().get(timeout=30) == [2, 4]


def test_generator_header(t: Any) -> None:
    header = (t.add.s(i, i) for i in range(5))
    assert chord(header, t.collect.s()).apply_async().get(timeout=30) == [0, 2, 4, 6, 8]


def test_chord_as_chord_body(t: Any) -> None:
    # The inner header gets the previous step's value unless immutable (.si).
    inner = chord([t.add.si(10, 10), t.add.si(20, 20)], t.collect.s())
    outer = chord([t.add.s(1, 1), t.add.s(2, 2)], chain(t.collect.s(), inner))
    assert outer.apply_async().get(timeout=30) == [20, 40]


def test_chain_of_chords(t: Any) -> None:
    workflow = chain(chord([t.add.s(1, 1), t.add.s(2, 2)], t.collect.s()),
                     chord([t.add.si(3, 3)], t.collect.s()))
    assert workflow.apply_async().get(timeout=30) == [6]


def test_chord_log_lives_result_expires_after_its_last_part(url: str, vhost: str) -> None:
    """Each part renews the chord's queues: a chord longer than its expiry still fires."""
    from tests.conftest import make_app

    client = make_app(url, result_expires=2)
    body_queue = f"chord-bodies-{uuid.uuid4().hex[:8]}"
    try:
        group_id, body = _chord_by_hand(client, 3, body_queue)
        for index in range(3):
            client.backend.on_chord_part_return(_Part(group_id, index, body), "SUCCESS", index)
            if index < 2:
                time.sleep(1.3)  # the last part comes 2.6 s after the chord was applied
        assert broker.queue(vhost, body_queue)["messages"] == 1
    finally:
        client.backend.close()
