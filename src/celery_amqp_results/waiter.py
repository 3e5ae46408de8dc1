"""Waiting for states pushed by the broker, with one deadline, on one thread's own queue.

Each waiting thread owns one connection and one exclusive queue.  To wait for
some tasks it binds that queue to the notify exchange under their ids, then
peeks their stored queues (a state stored before the binding is found there),
then sleeps in ``drain_events`` until the broker pushes the rest.  On every
exit (ready, timeout, error) it cancels its consumer, unbinds and purges, so
nothing stale is left to answer a later wait.
"""
from __future__ import annotations

import logging
import socket
import time
import uuid
from collections import deque
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    Iterator,
    Optional,
    Set,
    Tuple,
    Type,
)

from celery import states
from celery.exceptions import TimeoutError
from kombu import Connection

from .connection import broker_error
from .read import peek
from .topology import Topology

logger = logging.getLogger(__name__)

Meta = Dict[str, Any]
#: Decodes a raw message for a task id into its state (raises InvalidResultError).
Decoder = Callable[[str, Any], Meta]

#: Longest single sleep in drain_events, so on_interval runs at least this often.
MAX_NAP = 1.0


def drain(connection: Any, deadline: Optional[float], done: Callable[[], bool],
          on_interval: Optional[Callable[[], Any]] = None,
          wait: Optional[Callable[..., Any]] = None,
          now: Callable[[], float] = time.monotonic) -> None:
    """Drain ``connection`` until ``done()`` or the deadline; TimeoutError past it.

    Each nap is cut to the time left, so the deadline holds however many
    intermediate states arrive and however long ``MAX_NAP`` is.
    """
    wait = wait or connection.drain_events
    while not done():
        nap = MAX_NAP
        if deadline is not None:
            left = deadline - now()
            if left <= 0:
                raise TimeoutError("The operation timed out.")
            nap = min(nap, left)
        try:
            wait(timeout=nap)
        except socket.timeout:
            pass
        if on_interval:
            on_interval()


class Waiter:
    """One thread's push channel for results (see the module docstring)."""

    def __init__(self, connection_factory: Callable[[], Connection], topology: Topology,
                 decode: Decoder, peek_grace: float, retry_policy: Dict[str, Any]) -> None:
        self._factory = connection_factory
        self.topology = topology
        self._decode = decode
        self._grace = peek_grace
        self._retry_policy = retry_policy
        self.queue_name = f"{topology.names.waiter_prefix}{uuid.uuid4().hex}"
        self._conn: Optional[Connection] = None
        self._channel: Any = None
        self._peek_channel: Any = None
        self._consumer_tag: Optional[str] = None
        #: (task id, raw message, found by a peek rather than pushed)
        self._inbox: Deque[Tuple[str, Any, bool]] = deque()
        self._errors: Optional[Tuple[Type[BaseException], ...]] = None
        self._bound: Set[str] = set()

    # -- waiting ---------------------------------------------------------------------------

    def states(self, task_ids: Iterable[str], timeout: Optional[float] = None,
               on_interval: Optional[Callable[[], Any]] = None,
               ) -> Iterator[Tuple[str, Meta]]:
        """Yield ``(task_id, meta)`` for each state of ``task_ids`` until all are ready.

        Non-ready states are yielded as they arrive after the wait began; a ready
        state found already stored is yielded at once.  ``timeout`` is one deadline
        for the whole wait (``0`` checks once); past it TimeoutError is raised.
        """
        pending = set(task_ids)
        for task_id in pending:
            self.topology.names.task_queue(task_id)  # InvalidTaskIdError before any I/O
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0)
        armed = False
        try:
            while pending:
                try:
                    if not armed:
                        self._arm(pending, deadline)
                        armed = True
                    while self._inbox and pending:
                        arrived, meta = self._take(pending)
                        if arrived is None:
                            continue
                        if meta["status"] in states.READY_STATES:
                            pending.discard(arrived)
                        yield arrived, meta
                    if pending:
                        drain(self._conn, deadline, lambda: bool(self._inbox),
                              on_interval)
                except self._connection_errors() as exc:
                    logger.warning("result waiter lost its connection (%s); reconnecting",
                                   exc)
                    self._reset()
                    armed = False
        finally:
            self._disarm()

    def _take(self, pending: Set[str]) -> Tuple[Optional[str], Meta]:
        task_id, raw, peeked = self._inbox.popleft()
        if task_id not in pending:
            return None, {}
        meta = self._decode(task_id, raw)
        if peeked and meta["status"] not in states.READY_STATES:
            # A state from before the wait: the pushed ones that follow it are
            # what the caller sees, in order, so this one is left out.
            return None, {}
        return task_id, meta

    # -- broker side -------------------------------------------------------------------------

    def _connection_errors(self) -> Tuple[Type[BaseException], ...]:
        if self._errors is None:
            conn = self._factory()
            self._errors = (*tuple(conn.recoverable_connection_errors), ConnectionError)
        return self._errors

    def _connect(self, deadline: Optional[float]) -> Connection:
        if self._conn is None:
            conn = self._factory()
            policy = dict(self._retry_policy)
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.01)
            try:
                conn.ensure_connection(
                    max_retries=policy.get("max_retries"),
                    interval_start=policy.get("interval_start", 0),
                    interval_step=policy.get("interval_step", 1),
                    interval_max=policy.get("interval_max", 1),
                    timeout=timeout)
            except Exception as exc:
                conn.collect()
                error = broker_error(conn, exc)
                if deadline is not None and error.retryable and \
                        time.monotonic() >= deadline - 0.05:
                    # The broker stayed away for the whole wait: that is a timeout.
                    raise TimeoutError(f"The operation timed out: {error}") from exc
                raise error from exc
            channel = conn.channel()
            channel.queue_declare(queue=self.queue_name, durable=False, exclusive=True,
                                  auto_delete=True)
            self.topology.exchange(channel).declare()
            self._conn, self._channel = conn, channel
            self._peek_channel = conn.channel()
        return self._conn

    def _arm(self, task_ids: Set[str], deadline: Optional[float]) -> None:
        """Bind, consume, then peek: in that order no state can slip between."""
        self._connect(deadline)
        channel = self._channel
        exchange = self.topology.exchange.name
        new = sorted(task_ids - self._bound)
        for index, task_id in enumerate(new):
            # Pipelined: only the last bind waits; the channel runs them in order.
            channel.queue_bind(queue=self.queue_name, exchange=exchange,
                               routing_key=task_id, nowait=index < len(new) - 1)
            self._bound.add(task_id)
        if self._consumer_tag is None:
            self._consumer_tag = channel.basic_consume(
                queue=self.queue_name, no_ack=True, callback=self._on_message)
        names = self.topology.names
        for task_id in sorted(task_ids):
            message = peek(self._peek_channel, names.task_queue(task_id), self._grace)
            if message is not None:
                self._inbox.append((task_id, message, True))

    def _on_message(self, message: Any) -> None:
        task_id = message.properties.get("correlation_id") or \
            message.delivery_info.get("routing_key")
        self._inbox.append((task_id, message, False))

    def _disarm(self) -> None:
        """Cancel the consumer, drop the bindings and whatever they let in."""
        self._inbox.clear()
        if self._conn is None:
            self._bound.clear()
            self._consumer_tag = None
            return
        channel = self._channel
        try:
            if self._consumer_tag is not None:
                channel.basic_cancel(self._consumer_tag)
                self._consumer_tag = None
            exchange = self.topology.exchange.name
            for task_id in sorted(self._bound):
                channel.queue_unbind(queue=self.queue_name, exchange=exchange,
                                     routing_key=task_id, nowait=True)
            self._bound.clear()
            # Runs after the unbinds (one channel, in order): nothing can come in after.
            channel.queue_purge(queue=self.queue_name)
        except Exception as exc:
            # A broken connection takes its exclusive queue and bindings with it.
            logger.debug("result waiter could not clean up (%r); dropping connection", exc)
            self._reset()
        finally:
            self._inbox.clear()

    def _reset(self) -> None:
        conn, self._conn = self._conn, None
        self._channel = self._peek_channel = None
        self._consumer_tag = None
        self._bound.clear()
        if conn is not None:
            try:
                conn.collect()
            except Exception:  # pragma: no cover - best effort on a dead socket
                pass

    def close(self) -> None:
        """Close this waiter's connection (its exclusive queue goes with it)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pragma: no cover
                pass
        self._reset()

    def forget_after_fork(self) -> None:
        """Drop the parent's connection without a word on its socket."""
        self._conn = None
        self._reset()
