"""The read path: a stored state is never read as PENDING because another reader holds it,
an expired state reads PENDING at once, a broker that is down fails a read fast.

Issue 11, items 2 and 3.  Reads used to hold the peeked message from the broker's
``get-ok`` until this process sent the requeue, so a reader descheduled in between
(a busy machine) made every other reader see an empty queue, and past a 0.5 s grace
they answered PENDING.  The requeue now leaves in the same write as the get.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Callable, Iterator, List

import amqp
import pytest
from celery import states

from celery_amqp_results import ResultBrokerError, read
from tests import broker
from tests.conftest import ROOT, make_app

#: A reader process that stops itself (SIGSTOP) the moment the broker's answer to
#: its basic.get has arrived: the worst instant for a process to lose the CPU.
STOPPING_READER = r"""
import os, signal, sys
from amqp.abstract_channel import AbstractChannel
from celery import Celery

wait = AbstractChannel.wait

def wait_then_stop(self, method, *args, **kwargs):
    reply = wait(self, method, *args, **kwargs)
    if isinstance(reply, tuple) and len(reply) == 6:  # basic.get-ok: a message
        os.kill(os.getpid(), signal.SIGSTOP)
    return reply

AbstractChannel.wait = wait_then_stop
app = Celery("stopping-reader", broker=sys.argv[1], backend=sys.argv[1])
print(app.backend.get_task_meta(sys.argv[2], cache=False)["status"], flush=True)
"""


def new_id() -> str:
    return str(uuid.uuid4())


def qname(task_id: str) -> str:
    return f"celery-results.task.{task_id}"


@pytest.fixture
def stopped_reader(url: str) -> Iterator[Callable[[str], subprocess.Popen]]:
    """Starts readers that stop themselves mid-read; kills them at the end."""
    procs: List[subprocess.Popen] = []

    def start(task_id: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", STOPPING_READER, url, task_id],
                                cwd=ROOT, stdout=subprocess.PIPE)
        procs.append(proc)
        _, status = os.waitpid(proc.pid, os.WUNTRACED)  # until it has stopped itself
        assert os.WIFSTOPPED(status), f"reader ended instead of stopping ({status})"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        os.kill(proc.pid, signal.SIGCONT)
        proc.wait()


def test_a_reader_stopped_mid_read_hides_nothing(app, stopped_reader) -> None:
    """Failed on the old read path: the stopped reader held the only message for good,
    and every other read answered PENDING once its 0.5 s grace ran out."""
    task_id = new_id()
    app.backend.mark_as_done(task_id, "still here")
    stopped_reader(task_id)
    for _ in range(5):
        meta = app.backend.get_task_meta(task_id, cache=False)
        assert (meta["status"], meta["result"]) == (states.SUCCESS, "still here")
    assert app.AsyncResult(task_id).get(timeout=10) == "still here"


def test_two_stopped_readers_and_a_wait(app, stopped_reader) -> None:
    task_id = new_id()
    app.backend.store_result(task_id, {"step": 1}, "PROGRESS")
    stopped_reader(task_id)
    stopped_reader(task_id)
    assert app.backend.get_task_meta(task_id, cache=False)["status"] == "PROGRESS"
    app.backend.mark_as_done(task_id, 7)
    assert app.backend.get_task_meta(task_id, cache=False)["result"] == 7
    assert app.AsyncResult(task_id).get(timeout=10) == 7


def _publish_raw(vhost: str, task_id: str, expires_at_ms: int) -> None:
    """A SUCCESS state as the backend stores it, with the given expires-at header."""
    body = json.dumps({"status": "SUCCESS", "result": "r", "task_id": task_id,
                       "traceback": None, "children": []}).encode()
    with broker.RawBroker(vhost) as raw:
        raw.channel.queue_declare(qname(task_id), durable=True, auto_delete=False, arguments={
            "x-max-length": 1, "x-overflow": "drop-head", "x-expires": 86400000})
        raw.channel.basic_publish(amqp.Message(
            body, content_type="application/json", content_encoding="utf-8",
            delivery_mode=2, correlation_id=task_id,
            application_headers={"expires-at": expires_at_ms}),
            exchange="", routing_key=qname(task_id))


def test_expired_state_reads_pending_in_one_read(app, vhost, monkeypatch) -> None:
    """A state past its expires-at is gone for readers at once, although its queue lives
    (it is polled): one read, no re-reads, and nothing is removed by reading."""
    calls: List[str] = []
    original = read.get_and_requeue
    monkeypatch.setattr(read, "get_and_requeue",
                        lambda channel, name: calls.append(name) or original(channel, name))
    past, future = new_id(), new_id()
    now_ms = int(time.time() * 1000)
    _publish_raw(vhost, past, now_ms - 1000)
    _publish_raw(vhost, future, now_ms + 3_600_000)
    assert app.backend.get_task_meta(past, cache=False)["status"] == states.PENDING
    assert calls == [qname(past)]
    assert app.backend.get_task_meta(future, cache=False)["result"] == "r"
    assert not app.AsyncResult(past).ready()
    with broker.RawBroker(vhost) as raw:
        assert raw.message_count(qname(past)) == 1  # reading removed nothing


def test_empty_queue_is_read_attempts_times_then_pending(url, vhost, monkeypatch) -> None:
    """A result queue that exists with nothing in it (a transient state lost with a broker
    restart, a store that died between declaring and publishing): PENDING after exactly
    amqp_results_peek_attempts reads; the channel still works for a store after it."""
    app = make_app(url, amqp_results_peek_attempts=5)
    calls: List[str] = []
    original = read.get_and_requeue
    monkeypatch.setattr(read, "get_and_requeue",
                        lambda channel, name: calls.append(name) or original(channel, name))
    try:
        task_id = new_id()
        with broker.RawBroker(vhost) as raw:
            raw.channel.queue_declare(qname(task_id), durable=True, auto_delete=False,
                                      arguments={"x-max-length": 1, "x-overflow": "drop-head",
                                                 "x-expires": 86400000})
        assert app.backend.get_task_meta(task_id, cache=False)["status"] == states.PENDING
        assert calls == [qname(task_id)] * 5
        app.backend.mark_as_done(task_id, "now stored")
        assert app.backend.get_task_meta(task_id, cache=False)["result"] == "now stored"
    finally:
        app.backend.close()


class CountingServer:
    """A TCP port that accepts connections and closes them at once, counting them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def counting_server() -> Iterator[CountingServer]:
    server = CountingServer()
    yield server
    server.close()


def test_read_against_a_dead_broker_fails_fast(counting_server) -> None:
    """Reads retried by the stores' policy (20 tries, ~19 s): now for
    amqp_results_read_timeout (2 s) at most, then a ResultBrokerError naming the broker."""
    dead = f"amqp://someone:pw@127.0.0.1:{counting_server.port}/vh"
    app = make_app(dead)
    try:
        began = time.monotonic()
        with pytest.raises(ResultBrokerError) as caught:
            app.AsyncResult(new_id()).state  # noqa: B018
        print(f"read against a dead broker failed after {time.monotonic() - began:.2f} s, "
              f"{counting_server.accepted} connection attempts")
        assert caught.value.retryable
        assert f"127.0.0.1:{counting_server.port} vhost 'vh' as user 'someone'" in \
            str(caught.value)
        assert "pw" not in str(caught.value).replace("pw@", "")
        # The default policy's pauses are 0, 1, 1 ... s: tries at 0, 0, 1 and 2 s at most
        # (a busy machine makes fewer, never more); the store policy would make 21.
        assert 1 <= counting_server.accepted <= 4
    finally:
        app.backend.close()


def test_read_timeout_zero_tries_once(counting_server) -> None:
    app = make_app(f"amqp://guest:guest@127.0.0.1:{counting_server.port}//",
                   amqp_results_read_timeout=0)
    try:
        with pytest.raises(ResultBrokerError):
            app.backend.get_task_meta(new_id(), cache=False)
        assert counting_server.accepted == 1
    finally:
        app.backend.close()
