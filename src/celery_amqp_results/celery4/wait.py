"""Waiting for states in the Celery 4 topology, pushed by the broker, with one deadline.

Celery 4.4's ``get()`` consumed the task's own queue, which is auto-delete: its
first wait deleted the result for everyone.  Ours never consume a task's queue.
Each wait declares a queue of its own (exclusive, auto-delete, server-named) and
binds it to the result exchange under the routing keys of the tasks it waits for:
Celery 4 workers and ours publish every state to that exchange, so the broker
copies each state to it.  Then it reads the tasks' queues (a state stored before
the binding is found there) and sleeps in ``drain_events`` until the rest is
pushed.  Closing its channel at the end (ready, timeout, error) cancels the
consumer, which deletes the queue and its bindings.
"""
from __future__ import annotations

import logging
import time
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

from amqp.exceptions import PreconditionFailed
from celery import states
from celery.exceptions import TimeoutError
from kombu import Connection
from kombu.common import maybe_declare

from ..channel import revived
from ..connection import broker_error
from ..waiter import drain
from .topology import Celery4Topology, queue_name

logger = logging.getLogger(__name__)

Meta = Dict[str, Any]
#: Reads the newest state of a task (``channel, queue name, task id``); None if none.
Reader = Callable[[Any, str, str], Optional[Meta]]
#: Decodes a pushed message of a task id (``task id, message, queue name``).
Decoder = Callable[[str, Any, str], Meta]


class Celery4Waiter:
    """One thread's waits (see the module docstring): its own connection, a queue per wait.

    Waits may nest (Celery's ``join_native`` can ``get()`` a child while it
    iterates): each has its own channel on the connection, and draining the
    connection for one delivers the others' states to their own inboxes.
    """

    def __init__(self, connection_factory: Callable[[], Connection],
                 topology: Celery4Topology, read: Reader, decode: Decoder,
                 retry_policy: Dict[str, Any]) -> None:
        self._factory = connection_factory
        self.topology = topology
        self._read_newest = read
        self._decode = decode
        self._retry_policy = retry_policy
        self._conn: Optional[Connection] = None
        self._read_channel: Any = None
        self._errors: Optional[Tuple[Type[BaseException], ...]] = None

    def states(self, task_ids: Iterable[str], timeout: Optional[float] = None,
               on_interval: Optional[Callable[[], Any]] = None,
               just_sent: bool = False) -> Iterator[Tuple[str, Meta]]:
        """Yield ``(task_id, meta)`` for each state of ``task_ids`` until all are ready.

        A ready state already stored is yielded at once; other states as they are
        pushed after the wait began.  ``timeout`` is one deadline for the whole wait
        (``0`` checks once), TimeoutError past it; a lost connection is reconnected
        within the same deadline.  ``just_sent`` is accepted as the default
        topology's waiter takes it, and changes nothing here.
        """
        names = {task_id: queue_name(task_id) for task_id in task_ids}  # before any I/O
        pending: Set[str] = set(names)
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0)
        first = True
        while pending:
            try:
                if first and len(pending) == 1:
                    # A finished task costs one read, with no queue of our own.
                    (task_id,) = pending
                    self._connect(deadline)
                    meta = self._read_newest(self._read_channel, names[task_id], task_id)
                    if meta is not None and meta["status"] in states.READY_STATES:
                        pending.clear()
                        yield task_id, meta
                        return
                    if deadline is not None and time.monotonic() >= deadline:
                        raise TimeoutError("The operation timed out.")
                first = False
                yield from self._session(names, pending, deadline, on_interval)
            except self._connection_errors() as exc:
                logger.warning("Celery 4 result waiter lost its connection (%s); "
                               "reconnecting", exc)
                self._reset()

    def _session(self, names: Dict[str, str], pending: Set[str], deadline: Optional[float],
                 on_interval: Optional[Callable[[], Any]]) -> Iterator[Tuple[str, Meta]]:
        """Bind a queue of this wait's own, read, then drain until all are ready."""
        conn = self._connect(deadline)
        channel = conn.channel()
        inbox: Deque[Any] = deque()
        try:
            queue = channel.queue_declare(
                queue="", durable=False, exclusive=True, auto_delete=True).queue
            waited = sorted(pending)
            exchange = str(self.topology.exchange.name)
            for index, task_id in enumerate(waited):
                # Pipelined: only the last bind waits; the channel runs them in order.
                channel.queue_bind(queue=queue, exchange=exchange, routing_key=names[task_id],
                                   nowait=index < len(waited) - 1)
            channel.basic_consume(queue=queue, no_ack=True, callback=inbox.append)
            # Bound before reading: a state stored after the read reaches the inbox.
            # Read on the other channel: reading a queue that does not exist (yet)
            # makes the broker close the channel, which would cancel our consumer.
            for task_id in waited:
                meta = self._read_newest(self._read_channel, names[task_id], task_id)
                if meta is not None and meta["status"] in states.READY_STATES \
                        and task_id in pending:
                    pending.discard(task_id)
                    yield task_id, meta
            owners = {names[task_id]: task_id for task_id in waited}
            while pending:
                while inbox and pending:
                    message = inbox.popleft()
                    owner = self._owner(message, owners, pending)
                    if owner is None:
                        continue  # a state of a task already ready, or pushed twice
                    meta = self._decode(owner, message, names[owner])
                    if meta["status"] in states.READY_STATES:
                        pending.discard(owner)
                    yield owner, meta
                if pending:
                    drain(conn, deadline, lambda: bool(inbox), on_interval)
        finally:
            self._close(channel)

    @staticmethod
    def _owner(message: Any, owners: Dict[str, str], pending: Set[str]) -> Optional[str]:
        """The waited-for task a pushed state belongs to, if any."""
        owner: Optional[str] = message.properties.get("correlation_id")
        if owner not in pending:
            # Celery 4 sets correlation_id to the task id; a state without it is
            # known by its routing key (the task id without dashes).
            owner = owners.get(message.delivery_info.get("routing_key"))
        return owner if owner in pending else None

    # -- connection ------------------------------------------------------------------------

    def _connection_errors(self) -> Tuple[Type[BaseException], ...]:
        if self._errors is None:
            conn = self._factory()
            self._errors = (*tuple(conn.recoverable_connection_errors), ConnectionError)
        return self._errors

    def _connect(self, deadline: Optional[float]) -> Connection:
        if self._conn is None:
            conn = self._factory()
            policy = self._retry_policy
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
                    raise TimeoutError(f"The operation timed out: {error}") from exc
                raise error from exc
            channel = conn.channel()
            try:
                # Binding to an exchange that does not exist yet would close the channel.
                maybe_declare(self.topology.exchange, channel)
            except PreconditionFailed as exc:
                revived(channel)
                logger.error("result exchange %r exists with other properties (%s); "
                             "result_persistent must be the same everywhere",
                             self.topology.exchange.name, exc)
            self._conn, self._read_channel = conn, channel
        return self._conn

    def _close(self, channel: Any) -> None:
        try:
            channel.close()
        except Exception as exc:
            # A broken connection takes the queue and its bindings with it.
            logger.debug("Celery 4 result waiter could not close its channel (%r)", exc)
            self._reset()

    def _reset(self) -> None:
        conn, self._conn, self._read_channel = self._conn, None, None
        if conn is not None:
            try:
                conn.collect()
            except Exception:  # pragma: no cover - best effort on a dead socket
                pass

    def close(self) -> None:
        """Close this waiter's connection."""
        conn, self._conn, self._read_channel = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # pragma: no cover
                pass

    def forget_after_fork(self) -> None:
        """Drop the parent's connection without a word on its socket."""
        self._conn = self._read_channel = None
