"""The asyncio API (``celery_amqp_results.aio``) against the real broker and a real worker.

Each test runs its own event loop with ``asyncio.run``.  Results come from the
real worker (tests/tasks_app.py) or are stored by a second app, as a worker
would store them.  Bindings and connections are checked with rabbitmqctl.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable, Dict, List, Tuple, TypeVar

import aio_pika
import pytest
from celery import states
from celery.exceptions import TimeoutError
from kombu import Connection

from celery_amqp_results import InvalidTaskIdError, ResultBrokerError
from celery_amqp_results.aio import AsyncResults, HubClosed
from celery_amqp_results.aio.connect import addresses, ssl_context
from tests import broker
from tests.conftest import ROOT, make_app
from tests.test_read_path import _publish_raw as publish_raw
from tests.test_read_path import qname

T = TypeVar("T")


def new_id() -> str:
    return str(uuid.uuid4())


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture
def writer(url):
    """A second app, as a worker would be: stores states on its own connections."""
    app = make_app(url, result_persistent=False)
    yield app.backend
    app.backend.close()


def waiter_bindings(vhost: str, queue_name: str) -> List[str]:
    """Routing keys bound to ``queue_name`` on the notify exchange (rabbitmqctl)."""
    return [b["routing_key"] for b in broker.bindings(vhost)
            if b["destination_name"] == queue_name and b["source_name"]]


def connection_of(vhost: str, queue_name: str) -> str:
    """Pid of the connection that owns the exclusive queue ``queue_name`` (rabbitmqctl)."""
    out = broker.rabbitmqctl("list_queues", "-p", vhost, "name", "owner_pid", "-q",
                             "--no-table-headers")
    (pid,) = [line.split("\t")[1] for line in out.splitlines()
              if line.split("\t")[0] == queue_name]
    return pid


def aio_connections(vhost: str) -> int:
    """How many aio-pika (aiormq) client connections ``vhost`` has (rabbitmqctl)."""
    out = broker.rabbitmqctl("list_connections", "vhost", "client_properties", "-q",
                             "--no-table-headers")
    return sum(1 for line in out.splitlines()
               if line.split("\t")[0] == vhost and '"aiormq"' in line)


async def armed(results: AsyncResults, task_ids: List[str]) -> None:
    """Wait until the waiter queue is bound for every id (the waits are listening)."""
    while True:
        link = results._hub._link
        if link is not None:
            await link.settled()
            if set(task_ids) <= set(link.bound()):
                return
        await asyncio.sleep(0.01)


async def in_thread(fn: Callable[[], T]) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


# -- get --------------------------------------------------------------------------------


def test_get_returns_the_value_of_a_worker_task(worker, app) -> None:
    from tests.tasks_app import add

    async def main() -> Any:
        async with AsyncResults(app) as results:
            return await results.get(add.delay(2, 3).id, timeout=30)

    assert run(main()) == 5


def test_get_raises_the_exception_of_a_failed_worker_task(worker, app) -> None:
    from tests.tasks_app import fail

    task_id = fail.delay("boom").id

    async def main() -> Any:
        async with AsyncResults(app) as results:
            with pytest.raises(ValueError, match="boom"):
                await results.get(task_id, timeout=30)
            return await results.get(task_id, timeout=5, propagate=False)

    error = run(main())
    assert isinstance(error, ValueError) and str(error) == "boom"


def test_get_is_a_deadline_while_states_keep_arriving(app, writer) -> None:
    task_id = new_id()
    stop = threading.Event()
    stored = []

    def chatter() -> None:
        step = 0
        while not stop.is_set() and step < 1000:
            writer.store_result(task_id, {"step": step}, "PROGRESS")
            stored.append(step)
            step += 1
            time.sleep(0.01)

    async def main() -> float:
        async with AsyncResults(app) as results:
            thread = threading.Thread(target=chatter, daemon=True)
            started = time.monotonic()
            thread.start()
            try:
                with pytest.raises(TimeoutError):
                    await results.get(task_id, timeout=1.5)
            finally:
                stop.set()
                thread.join()
            return time.monotonic() - started

    elapsed = run(main())
    # The deadline contract (not a speed figure): a wait that restarted its clock
    # on each of these states would still be waiting when the chatter stops (10 s).
    assert 1.5 <= elapsed < 4, elapsed
    assert len(stored) > 20, "no states were stored while waiting"


def test_timeout_zero_checks_once(app, writer, vhost) -> None:
    pending_id, done_id = new_id(), new_id()
    writer.mark_as_done(done_id, "ready")

    async def main() -> Any:
        async with AsyncResults(app) as results:
            with pytest.raises(TimeoutError):
                await results.get(pending_id, timeout=0)
            # Checking once binds nothing.
            assert results._hub._link is not None and results._hub._link.bound() == {}
            assert waiter_bindings(vhost, results._hub.queue_name) == []
            return await results.get(done_id, timeout=0)

    assert run(main()) == "ready"


def test_get_wakes_on_a_state_stored_after_it_started(app, writer) -> None:
    task_id = new_id()

    async def main() -> Any:
        async with AsyncResults(app) as results:
            waiting = asyncio.ensure_future(results.get(task_id, timeout=30))
            await armed(results, [task_id])
            await in_thread(lambda: writer.mark_as_done(task_id, "pushed"))
            return await waiting

    assert run(main()) == "pushed"


# -- get_meta and non-destructive reads -------------------------------------------------


def test_get_meta_peeks_and_leaves_the_result_for_everyone(app, writer, vhost) -> None:
    done_id, unknown_id = new_id(), new_id()
    writer.mark_as_done(done_id, {"answer": 42})

    async def main() -> List[Dict[str, Any]]:
        async with AsyncResults(app) as results:
            first = await results.get_meta(done_id)
            second = await results.get_meta(done_id)
            value = await results.get(done_id, timeout=5)
            assert value == {"answer": 42}
            return [first, second, await results.get_meta(unknown_id)]

    first, second, unknown = run(main())
    assert first["status"] == states.SUCCESS and first["result"] == {"answer": 42}
    assert second == first
    assert unknown == {"status": states.PENDING, "result": None}
    # Still stored, still readable by the synchronous backend.
    with broker.RawBroker(vhost) as raw:
        assert raw.message_count(app.backend.names.task_queue(done_id)) == 1
    assert app.backend.get_task_meta(done_id, cache=False)["result"] == {"answer": 42}


# -- as_completed -----------------------------------------------------------------------


def test_as_completed_yields_in_arrival_order_with_one_deadline(app, writer) -> None:
    before, a, b, c, never = (new_id() for _ in range(5))
    writer.mark_as_done(before, "before")

    async def main() -> List[Any]:
        seen: List[Any] = []
        async with AsyncResults(app) as results:

            async def collect() -> None:
                async for task_id, meta in results.as_completed([a, b, before, c],
                                                                timeout=30):
                    seen.append((task_id, meta["status"], meta["result"]))

            collecting = asyncio.ensure_future(collect())
            await armed(results, [a, b, c])
            # Each store is confirmed, then announced, before the next one starts.
            await in_thread(lambda: writer.mark_as_done(c, "c"))
            await in_thread(lambda: writer.mark_as_failure(a, KeyError("a")))
            await in_thread(lambda: writer.mark_as_done(b, "b"))
            await collecting
            # One deadline for all: one task never finishes.
            with pytest.raises(TimeoutError):
                async for task_id, _ in results.as_completed([a, never], timeout=0.5):
                    seen.append(task_id)
        return seen

    seen = run(main())
    assert [s[:2] for s in seen[:4]] == [(before, states.SUCCESS), (c, states.SUCCESS),
                                         (a, states.FAILURE), (b, states.SUCCESS)]
    assert isinstance(seen[2][2], KeyError)
    assert seen[4:] == [a]  # ready at once; `never` then times out


# -- states -----------------------------------------------------------------------------


def test_states_yields_each_progress_state_then_success(app, writer) -> None:
    task_id = new_id()

    async def main() -> List[Dict[str, Any]]:
        async with AsyncResults(app) as results:
            seen: List[Dict[str, Any]] = []

            async def collect() -> None:
                async for meta in results.states(task_id, timeout=30):
                    seen.append(meta)

            collecting = asyncio.ensure_future(collect())
            await armed(results, [task_id])

            def work() -> None:
                for step in range(5):
                    writer.store_result(task_id, {"step": step}, "PROGRESS")
                writer.mark_as_done(task_id, "finished")

            await in_thread(work)
            await collecting
            return seen

    seen = run(main())
    assert [m["status"] for m in seen] == ["PROGRESS"] * 5 + [states.SUCCESS]
    assert [m["result"]["step"] for m in seen[:5]] == list(range(5))
    assert seen[-1]["result"] == "finished"


def test_states_of_a_worker_task_end_with_success(worker, app) -> None:
    from tests.tasks_app import progress

    async def main() -> List[Dict[str, Any]]:
        async with AsyncResults(app) as results:
            task_id = progress.delay(5, 0.2).id
            return [meta async for meta in results.states(task_id, timeout=30)]

    seen = run(main())
    assert seen[-1]["status"] == states.SUCCESS and seen[-1]["result"] == 5
    # The wait may start after the first states: those it saw are in order.
    steps = [m["result"]["step"] for m in seen if m["status"] == "PROGRESS"]
    assert steps and steps == sorted(steps) and steps[-1] == 4
    assert {m["status"] for m in seen[:-1]} <= {"PROGRESS", states.STARTED}


# -- many at once -----------------------------------------------------------------------


def test_a_thousand_concurrent_gets_share_one_connection(app, writer, vhost) -> None:
    ids = [new_id() for _ in range(500)]
    expected = {task_id: index for index, task_id in enumerate(ids)}

    async def main() -> List[Any]:
        async with AsyncResults(app) as results:
            # Two awaits per id: 1000 concurrent gets, counted bindings.
            waits = [asyncio.ensure_future(results.get(task_id, timeout=120))
                     for task_id in ids + ids]
            await armed(results, ids)
            link = results._hub._link
            assert link is not None and set(link.bound().values()) == {2}
            assert aio_connections(vhost) == 1  # one for the thousand

            def store(chunk: List[str]) -> None:
                for task_id in chunk:
                    writer.mark_as_done(task_id, expected[task_id])

            with ThreadPoolExecutor(4) as pool:
                loop = asyncio.get_running_loop()
                await asyncio.gather(*(loop.run_in_executor(pool, store, ids[i::4])
                                       for i in range(4)))
            values = await asyncio.gather(*waits)
            await link.settled()
            assert link.bound() == {}
            assert waiter_bindings(vhost, results._hub.queue_name) == []
            assert results._hub._link is link  # never reconnected
            return values

    values = run(main())
    assert values == [expected[task_id] for task_id in ids + ids]
    # Nothing was consumed: every result is still there for the synchronous backend.
    reader = make_app(app.conf.broker_url).backend
    try:
        assert all(reader.get_task_meta(task_id, cache=False)["result"] == expected[task_id]
                   for task_id in ids)
    finally:
        reader.close()


# -- cleanup ----------------------------------------------------------------------------


def test_a_cancelled_get_leaves_no_binding_behind(app, writer, vhost) -> None:
    task_id = new_id()

    async def main() -> Any:
        async with AsyncResults(app) as results:
            queue_name = results._hub.queue_name
            first = asyncio.ensure_future(results.get(task_id))
            second = asyncio.ensure_future(results.get(task_id))
            await armed(results, [task_id])
            assert waiter_bindings(vhost, queue_name) == [task_id]
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
            link = results._hub._link
            assert link is not None
            await link.settled()
            # The other await still wants it: still bound, and it still gets the result.
            assert waiter_bindings(vhost, queue_name) == [task_id]
            second.cancel()
            with pytest.raises(asyncio.CancelledError):
                await second
            await link.settled()
            assert link.bound() == {}
            assert waiter_bindings(vhost, queue_name) == []
            # A new wait for the same id binds again and is woken.
            third = asyncio.ensure_future(results.get(task_id, timeout=30))
            await armed(results, [task_id])
            await in_thread(lambda: writer.mark_as_done(task_id, "after cancel"))
            return await third

    assert run(main()) == "after cancel"


def test_a_timed_out_get_and_an_abandoned_iteration_leave_no_binding(app, writer,
                                                                     vhost) -> None:
    slow, other = new_id(), new_id()

    async def main() -> None:
        async with AsyncResults(app) as results:
            with pytest.raises(TimeoutError):
                await results.get(slow, timeout=0.3)
            iterator = results.states(other, timeout=30)
            first = asyncio.ensure_future(iterator.__anext__())
            await armed(results, [other])
            await in_thread(lambda: writer.store_result(other, {"step": 0}, "PROGRESS"))
            assert (await first)["status"] == "PROGRESS"
            await iterator.aclose()  # what `break` in `async with aclosing(...)` does
            link = results._hub._link
            assert link is not None
            await link.settled()
            assert link.bound() == {}
            assert waiter_bindings(vhost, results._hub.queue_name) == []

    run(main())


def test_a_lost_connection_is_reopened_and_the_wait_goes_on(app, writer, vhost) -> None:
    task_id = new_id()

    async def main() -> Any:
        async with AsyncResults(app) as results:
            waiting = asyncio.ensure_future(results.get(task_id, timeout=60))
            await armed(results, [task_id])
            first = results._hub._link
            pid = connection_of(vhost, results._hub.queue_name)
            await in_thread(lambda: broker.rabbitmqctl(
                "close_connection", pid, "test: connection lost"))
            # The state is stored while the waiter is reconnecting or after it did.
            await in_thread(lambda: writer.mark_as_done(task_id, "after reconnect"))
            value = await waiting
            assert results._hub._link is not first
            # And a plain read after another loss reconnects too.
            pid = connection_of(vhost, results._hub.queue_name)
            await in_thread(lambda: broker.rabbitmqctl("close_connection", pid, "test"))
            assert (await results.get_meta(task_id))["result"] == "after reconnect"
            return value

    assert run(main()) == "after reconnect"


def test_close_ends_running_waits_and_later_calls(app) -> None:
    task_id = new_id()

    async def main() -> None:
        results = AsyncResults(app)
        waiting = asyncio.ensure_future(results.get(task_id))
        await armed(results, [task_id])
        await results.close()
        with pytest.raises(HubClosed):
            await waiting
        with pytest.raises(HubClosed):
            await results.get_meta(task_id)

    run(main())


def test_one_instance_belongs_to_one_event_loop(app) -> None:
    results = AsyncResults(app)

    async def use() -> Dict[str, Any]:
        return await results.get_meta(new_id())

    async def first_loop() -> None:
        await use()
        await results.close()

    run(first_loop())
    with pytest.raises(RuntimeError, match="another event loop"):
        run(use())


# -- bad input and broker errors --------------------------------------------------------


@pytest.mark.parametrize("bad", ["", 42, None, "x" * 300])
def test_bad_task_ids_are_refused_before_any_io(app, bad) -> None:
    async def main() -> None:
        results = AsyncResults(app)
        with pytest.raises(InvalidTaskIdError):
            await results.get(bad)
        with pytest.raises(InvalidTaskIdError):
            await results.get_meta(bad)
        with pytest.raises(InvalidTaskIdError):
            async for _ in results.states(bad):
                pass
        with pytest.raises(InvalidTaskIdError):
            async for _ in results.as_completed([new_id(), bad]):
                pass
        assert results._hub._link is None  # nothing was opened
        await results.close()

    run(main())


def test_an_app_without_this_backend_is_refused() -> None:
    from celery import Celery

    app = Celery("other", backend="cache+memory://", set_as_current=False)
    with pytest.raises(TypeError, match=r"celery_amqp_results\.AMQPBackend"):
        AsyncResults(app)


def test_wrong_password_names_host_and_vhost_never_the_password(vhost) -> None:
    secret = "s3cret-" + uuid.uuid4().hex[:8]
    app = make_app(broker.url_for(vhost, password=secret))

    async def main() -> ResultBrokerError:
        async with AsyncResults(app) as results:
            with pytest.raises(ResultBrokerError) as caught:
                await results.get_meta(new_id())
            return caught.value

    error = run(main())
    text = str(error)
    assert f"{broker.HOST}:{broker.PORT} vhost {vhost!r} as user 'guest'" in text, text
    assert secret not in text and secret not in repr(error.__cause__)
    assert error.retryable is False


def test_unknown_vhost_and_broker_down_are_clear(vhost) -> None:
    no_vhost = make_app(broker.url_for("no-such-vhost-" + uuid.uuid4().hex[:6]))
    down = make_app("amqp://guest:guest@127.0.0.1:1//")
    broker.fail_fast(down)

    async def main() -> List[ResultBrokerError]:
        found = []
        for app in (no_vhost, down):
            async with AsyncResults(app) as results:
                with pytest.raises(ResultBrokerError) as caught:
                    await results.get_meta(new_id())
                found.append(caught.value)
        return found

    refused, unreachable = run(main())
    assert "no-such-vhost" in str(refused) and not refused.retryable
    assert "127.0.0.1:1 vhost '/'" in str(unreachable) and unreachable.retryable


def test_a_broker_down_for_the_whole_wait_is_a_timeout() -> None:
    down = make_app("amqp://guest:guest@127.0.0.1:1//")

    async def main() -> None:
        async with AsyncResults(down) as results:
            with pytest.raises(TimeoutError):
                await results.get(new_id(), timeout=1)

    run(main())


def test_without_aio_pika_the_import_error_says_what_to_install() -> None:
    code = ("import sys; sys.modules['aio_pika'] = None\n"
            "try:\n    import celery_amqp_results.aio\n"
            "except ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "celery-amqp-results[asyncio]" in out


# -- pure logic: where to connect and how ------------------------------------------------


def test_addresses_follow_the_backend_url_and_its_failover_list() -> None:
    conn = Connection("amqp://u:pw@h1:5673/v1;amqp://u2:pw2@h2:5674/v2")
    first, second = addresses(conn)
    assert (first.host, first.port, first.login, first.vhost) == ("h1", 5673, "u", "v1")
    assert (second.host, second.port, second.login, second.vhost) == ("h2", 5674, "u2", "v2")
    assert "pw" not in repr(first) and "pw" not in first.describe()


def test_tls_options_mean_what_they_mean_to_py_amqp() -> None:
    assert ssl_context(None, "h") is None
    default = ssl_context(True, "h")
    assert default is not None and default.verify_mode == ssl.CERT_REQUIRED
    unchecked = ssl_context({"cert_reqs": ssl.CERT_NONE}, "h")
    assert unchecked is not None and unchecked.verify_mode == ssl.CERT_NONE
    assert not unchecked.check_hostname
    named = ssl_context({"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None}, "h")
    assert named is not None and named.check_hostname
    context_form = ssl_context({"context": {"check_hostname": True}}, "h")
    assert context_form is not None and context_form.check_hostname
    with pytest.raises(ValueError, match="server_hostname='other'"):
        ssl_context({"server_hostname": "other"}, "h")
    with pytest.raises(ValueError, match="bogus"):
        ssl_context({"bogus": 1}, "h")


# -- issue 11, item 5: no stray output, errors as the synchronous API words them ----------

#: Loggers whose records a user would see; asyncio's own included.
QUIET_LOGGERS = ("aio_pika", "aiormq", "asyncio", "celery_amqp_results", "")


@pytest.fixture
def silence(capfd, caplog):
    """Asserts, after the test body, that nothing reached stderr or a log at WARNING+."""
    caplog.set_level(logging.WARNING)
    for name in QUIET_LOGGERS:
        caplog.set_level(logging.WARNING, logger=name)

    def check() -> None:
        err = capfd.readouterr().err
        loud = [f"{r.name}: {r.getMessage()}" for r in caplog.records
                if r.levelno >= logging.WARNING]
        assert err == "" and loud == [], (err, loud)

    return check


def test_200_concurrent_gets_print_nothing(app, writer, silence) -> None:
    """Failed before: closing while the link's binder was unbinding the last ids
    cancelled that Queue.Unbind RPC, and aiormq logged "Closing channel ... cancelled"."""
    ids = [new_id() for _ in range(200)]

    async def main() -> List[Any]:
        async with AsyncResults(app) as results:
            waits = [asyncio.ensure_future(results.get(task_id, timeout=60)) for task_id in ids]
            await armed(results, ids)
            await in_thread(lambda: [writer.mark_as_done(task_id, 1) for task_id in ids])
            # Closed at once: unbinds of the last ids are still queued or in flight.
            return await asyncio.gather(*waits)

    assert run(main()) == [1] * 200

    async def finished() -> List[Any]:
        async with AsyncResults(app) as results:
            return await asyncio.gather(*(results.get(task_id, timeout=60) for task_id in ids))

    assert run(finished()) == [1] * 200
    silence()


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound by the kernel, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_nothing_listening_is_a_broker_error_like_the_sync_one(silence) -> None:
    """Failed before: get_meta retried for the stores' ~19 s, aiormq logged "error when
    creating transport" on every try, and a get with a deadline raised a bare
    TimeoutError with no cause; the reason read differently from the sync API's."""
    port = closed_port()
    app = make_app(f"amqp://someone:pw@127.0.0.1:{port}/vh")
    where = f"127.0.0.1:{port} vhost 'vh' as user 'someone'"
    sync_read = sync_wait = None
    try:
        with pytest.raises(ResultBrokerError) as caught:
            app.backend.get_task_meta(new_id())
        sync_read = caught.value
        with pytest.raises(TimeoutError) as timed_out:
            app.AsyncResult(new_id()).get(timeout=1)
        sync_wait = timed_out.value
    finally:
        app.backend.close()

    async def main() -> Tuple[ResultBrokerError, TimeoutError]:
        async with AsyncResults(app) as results:
            began = time.monotonic()
            with pytest.raises(ResultBrokerError) as read_error:
                await results.get_meta(new_id())
            assert time.monotonic() - began < 10
            with pytest.raises(TimeoutError) as wait_error:
                await results.get(new_id(), timeout=1)
            return read_error.value, wait_error.value

    read_error, wait_error = run(main())
    assert str(read_error) == str(sync_read), (str(read_error), str(sync_read))
    assert where in str(read_error) and read_error.retryable
    assert isinstance(read_error.__cause__, OSError), repr(read_error.__cause__)
    assert str(wait_error) == str(sync_wait), (str(wait_error), str(sync_wait))
    assert isinstance(wait_error.__cause__, OSError), repr(wait_error.__cause__)
    silence()


def test_unknown_vhost_names_the_real_user() -> None:
    """Failed before: the password 'guest' was masked in the whole message, user included."""
    name = "no-such-vhost-" + uuid.uuid4().hex[:6]
    app = make_app(broker.url_for(name))
    try:
        with pytest.raises(ResultBrokerError) as caught:
            app.backend.get_task_meta(new_id())
        sync_error = caught.value
    finally:
        app.backend.close()

    async def main() -> ResultBrokerError:
        async with AsyncResults(app) as results:
            with pytest.raises(ResultBrokerError) as caught:
                await results.get_meta(new_id())
            return caught.value

    error = run(main())
    prefix = (f"cannot use the result broker at {broker.HOST}:{broker.PORT} vhost {name!r} "
              "as user 'guest': ")
    assert str(sync_error).startswith(prefix)
    assert str(error).startswith(prefix), str(error)
    assert "****" not in str(error) and not error.retryable
    assert error.__cause__ is not None


# -- issue 11, item 5: the read path of read.py ----------------------------------------------


def test_an_expired_state_reads_pending_as_in_the_sync_read(app, vhost) -> None:
    """Failed before: the asyncio peek ignored expires-at and returned the stale state."""
    past, future = new_id(), new_id()
    now_ms = int(time.time() * 1000)
    publish_raw(vhost, past, now_ms - 1000)
    publish_raw(vhost, future, now_ms + 3_600_000)
    assert app.backend.get_task_meta(past, cache=False)["status"] == states.PENDING

    async def main() -> Tuple[Dict[str, Any], Dict[str, Any], Dict[str, Any]]:
        async with AsyncResults(app) as results:
            with pytest.raises(TimeoutError):
                await results.get(past, timeout=0)
            return (await results.get_meta(past), await results.get_meta(future),
                    await results.wait(future, timeout=10))

    expired, kept, waited = run(main())
    assert expired["status"] == states.PENDING
    assert (kept["status"], kept["result"]) == (states.SUCCESS, "r")
    assert waited["result"] == "r"
    with broker.RawBroker(vhost) as raw:
        assert raw.message_count(qname(past)) == 1  # reading removed nothing


def test_an_empty_queue_is_read_peek_attempts_times_then_pending(url, vhost,
                                                                 monkeypatch) -> None:
    """Failed before: an existing empty queue was re-read for peek_grace (time), however
    many reads that took, not amqp_results_peek_attempts times."""
    app = make_app(url, amqp_results_peek_attempts=5, amqp_results_peek_grace=30)
    task_id = new_id()
    with broker.RawBroker(vhost) as raw:
        raw.channel.queue_declare(qname(task_id), durable=True, auto_delete=False,
                                  arguments={"x-max-length": 1, "x-overflow": "drop-head",
                                             "x-expires": 86400000})
    gets: List[str] = []
    original = aio_pika.Queue.get

    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        gets.append(self.name)
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(aio_pika.Queue, "get", counted)

    async def main() -> Dict[str, Any]:
        async with AsyncResults(app) as results:
            return await asyncio.wait_for(results.get_meta(task_id), 10)

    try:
        assert run(main())["status"] == states.PENDING
        assert gets == [qname(task_id)] * 5
    finally:
        app.backend.close()
