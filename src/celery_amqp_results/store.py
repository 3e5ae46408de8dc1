"""Writing states: each store is confirmed by the broker or raises, never dropped."""
from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Callable, Dict, Optional, TypeVar

import amqp
from amqp.exceptions import NotFound, PreconditionFailed
from kombu.common import maybe_declare
from kombu.utils.functional import LRUCache, fxrange

from .channel import returns_of, revived
from .connection import ConnectionPool, broker_error, failures
from .errors import ResultBrokerError, ResultStoreError
from .replace import replace
from .telemetry import Telemetry
from .topology import EXPIRES_AT, NoCacheQueue, Topology

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How many queues declared elsewhere with other arguments a process remembers.
CLASH_CACHE_SIZE = 10_000

#: How many quorum result queues a process remembers having stored a state in.
STORED_CACHE_SIZE = 10_000

#: Seconds a store into a quorum queue waits for a reader to put the old state back.
REPLACE_GRACE = 0.5


class Unavailable(ResultStoreError):
    """The queue cannot take a state just now: retried, then raised as a ResultStoreError."""


def declare_exchange(channel: Any, topology: Topology) -> None:
    """Declare the notify exchange once per channel; a clash is an error naming the setting."""
    try:
        maybe_declare(topology.exchange, channel)
    except PreconditionFailed as exc:
        revived(channel)
        raise ResultBrokerError(topology.explain_exchange_clash(str(exc)),
                                retryable=False) from exc


class Store:
    """Stores states in per-task queues and announces them to waiters.

    A state is published to its task's queue through the default exchange,
    ``mandatory`` and confirmed; then, once the broker has confirmed it, it is
    published again on the notify exchange for waiters.  That order means a
    waiter that bound its queue and then peeked cannot miss a state: if the
    peek came too early for the stored copy, the announcement came after the
    binding.  The queue is declared before every state: the first time that
    creates it, and every time it renews the queue's ``x-expires`` (a publish
    alone does not), so a result lives ``result_expires`` after its last state
    however long ago the first was stored.  The declaration waits for its
    answer: on RabbitMQ 3.10 one sent without waiting and followed at once by
    the publish does not renew ``x-expires`` (measured).  A queue that has
    vanished (forgotten, expired) between the two is reported by the broker
    returning the state: it is declared and published again.
    """

    def __init__(self, pool: ConnectionPool, topology: Topology,
                 retry_policy: Dict[str, Any], telemetry: Optional[Telemetry] = None) -> None:
        self.pool = pool
        self.topology = topology
        self.retry_policy = retry_policy
        #: Where retries, declarations and deletions are counted (telemetry.py).
        self.telemetry = telemetry or Telemetry(None, None, topology.names)
        #: Queues that exist with other arguments: not declared again (it would
        #: only fail again), published into as they are.
        self._clashing = LRUCache(limit=CLASH_CACHE_SIZE)
        #: Quorum queues this process stored a state in: an empty one has a reader
        #: holding its message, not nothing to replace (replace.py).
        self._stored = LRUCache(limit=STORED_CACHE_SIZE)

    def run(self, operation: Callable[[Any], T], deadline: Optional[float] = None,
            name: str = "store") -> T:
        """Run ``operation(channel)`` on a pooled connection, retrying by the retry policy.

        With a ``deadline`` (``time.monotonic()``), what a read passes, retries also
        stop there, and no connection attempt waits past it.  ``name`` is what the
        retries metric calls the operation.

        The loop is ours rather than kombu's ``Connection.ensure``: ensure connects a
        fresh connection with kombu's own retry defaults (2 s apart, ~6 s in all,
        whatever the policy says), and an error while it reopens the channel after a
        reconnect escapes its loop, so one more lost connection ended the retries.
        """
        policy = self.retry_policy
        max_retries = policy.get("max_retries")
        interval_max = float(policy.get("interval_max", 1))
        intervals = fxrange(policy.get("interval_start", 0), interval_max,
                            policy.get("interval_step", 1), repeatlast=True)

        def pause_or_give_up(retries: int, error: Exception, cause: BaseException) -> None:
            pause = min(float(next(intervals)), interval_max)
            left = None if deadline is None else deadline - time.monotonic()
            if (max_retries is not None and retries >= max_retries) or (
                    left is not None and left <= 0):
                raise error from cause
            self.telemetry.count("retries", 1, {"messaging.operation.name": name,
                                                "error.type": type(cause).__qualname__})
            time.sleep(pause if left is None else min(pause, left))

        with self.pool.acquire() as conn:
            connect_timeout = conn.connect_timeout
            for retries in itertools.count():
                try:
                    if deadline is not None and not conn.connected:
                        # A host that drops packets would hold the connect for the
                        # whole connect_timeout (4 s): never past the deadline.
                        conn.connect_timeout = max(0.05, min(
                            connect_timeout or 4, deadline - time.monotonic()))
                    try:
                        conn.ensure_connection(max_retries=0)  # one attempt, no sleep
                    finally:
                        conn.connect_timeout = connect_timeout
                    return operation(conn.default_channel)
                except Unavailable as exc:
                    # A quorum queue electing a new leader (nacks for ~0.4 s), or a
                    # classic queue whose node is down (it may come back).  Retried
                    # on a new connection: the channel a quorum queue nacked keeps
                    # being nacked after the new leader is elected (measured).
                    conn.collect()
                    pause_or_give_up(retries, ResultStoreError(*exc.args), exc)
                except failures(conn) as exc:
                    error = broker_error(conn, exc)
                    if not error.retryable:
                        raise error from exc
                    conn.collect()
                    conn.maybe_switch_next()  # failover URLs: the next host, as ensure did
                    pause_or_give_up(retries, error, exc)
        raise AssertionError("unreachable")  # pragma: no cover

    def put(self, task_id: str, state: str, queue_name: str, routing_key: Optional[str],
            body: bytes, content_type: str, content_encoding: str,
            headers: Optional[Dict[str, Any]] = None,
            reply_queue: Optional[str] = None) -> None:
        """Store one state of ``task_id`` in ``queue_name``; announce it under ``routing_key``.

        ``headers`` are added to the message's (a trace context, telemetry.py).  With
        a ``reply_queue`` (the sending thread's waiter queue) the state is announced
        there too, straight through the default exchange: a waiter that pre-armed the
        task binds nothing (waiter.py).  If that queue does not exist, the broker drops
        the announcement.
        """
        properties = self._properties(task_id, content_type, content_encoding,
                                      self.topology.expires_at(state, time.time()), headers)
        queue = self.topology.storage_queue(queue_name)

        def operation(channel: Any) -> None:
            self._publish(channel, queue, body, properties, task_id, state, create=True)
            if routing_key is not None:
                try:
                    channel.basic_publish(
                        amqp.Message(body, **properties),
                        exchange=self._exchange(channel), routing_key=routing_key)
                except amqp.exceptions.MessageNacked:
                    # A waiter queue bound to this id is on a node that is down: its
                    # waiter lost its connection too, and peeks when it reconnects.
                    logger.debug("announcement of %s state of %s nacked", state, task_id)
                if reply_queue is not None:
                    try:
                        channel.basic_publish(amqp.Message(body, **properties),
                                              exchange="", routing_key=reply_queue)
                    except amqp.exceptions.MessageNacked:  # as above
                        logger.debug("direct announcement of %s state of %s nacked",
                                     state, task_id)

        self.run(operation)

    def put_in(self, queue: NoCacheQueue, task_id: str, state: str, body: bytes,
               content_type: str, content_encoding: str, *, create: bool) -> bool:
        """Publish a message that never expires to ``queue``, confirmed.

        With ``create`` the queue is declared if needed; without, a missing queue
        makes this return False and publishes nothing (the chord log is gone).
        """
        properties = self._properties(task_id, content_type, content_encoding, None)
        return self.run(lambda channel: self._publish(
            channel, queue, body, properties, task_id, state, create=create))

    def _properties(self, task_id: str, content_type: str, content_encoding: str,
                    expires_at: Optional[int],
                    headers: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        properties: Dict[str, Any] = {
            "content_type": content_type,
            "content_encoding": content_encoding,
            "delivery_mode": self.topology.delivery_mode,
            "correlation_id": task_id,
        }
        application_headers = dict(headers or {})
        if expires_at is not None:
            application_headers[EXPIRES_AT] = expires_at
        if application_headers:
            properties["application_headers"] = application_headers
        return properties

    def _publish(self, channel: Any, queue: NoCacheQueue, body: bytes,
                 properties: Dict[str, Any], task_id: str, state: str, create: bool) -> bool:
        """Publish to ``queue`` through the default exchange, mandatory and confirmed.

        A nack raises ResultStoreError.  A return (no such queue) declares the
        queue and publishes again if ``create``, else answers False.
        """
        queue_name = str(queue.name)
        quorum = (getattr(queue, "queue_arguments", None) or {}).get("x-queue-type") == "quorum"
        try:
            if not create:
                return self._publish_stored(channel, queue_name, body, properties)
            ready = None
            if queue_name not in self._clashing:
                ready = self._declare(channel, queue)
            if quorum and (ready or queue_name in self._stored):
                # An older state a reader puts back would drop this one (replace.py).
                stored = replace(channel, queue_name, lambda: self._publish_stored(
                    channel, queue_name, body, properties), REPLACE_GRACE)
            else:
                stored = self._publish_stored(channel, queue_name, body, properties)
            if stored:
                self._stored[queue_name] = True
                return True
            # The queue went away right after the declaration: declare it again.
            self._declare(channel, queue)
            if self._publish_stored(channel, queue_name, body, properties):
                return True
        except NotFound as exc:
            if "down or inaccessible" not in str(exc):
                raise
            raise Unavailable(
                f"the node holding queue {queue_name!r} is down: the {state} state of "
                f"task {task_id!r} was not stored", task_id=task_id, state=state) from exc
        except amqp.exceptions.MessageNacked as exc:
            # Caught here: kombu would re-raise it as a connection error.
            refused = (f"the broker refused (nack) the {state} state of task {task_id!r} "
                       f"in queue {queue_name!r}")
            if quorum:
                # A quorum queue nacks while it elects a new leader (~0.4 s).
                raise Unavailable(refused, task_id=task_id, state=state) from exc
            raise ResultStoreError(refused, task_id=task_id, state=state) from exc
        raise ResultStoreError(
            f"the broker returned the {state} state of task {task_id!r} as "
            f"unroutable twice: queue {queue_name!r} vanished right after "
            f"being declared", task_id=task_id, state=state)

    def delete(self, queue_name: str) -> None:
        """Delete a stored result for everyone (no error if it is already gone)."""
        def operation(channel: Any) -> None:
            channel.queue_delete(queue=queue_name)
            self._clashing.pop(queue_name, None)
            self._stored.pop(queue_name, None)
        self.run(operation, name="forget")
        self.telemetry.count("queues_deleted")

    def _exchange(self, channel: Any) -> str:
        declare_exchange(channel, self.topology)
        return str(self.topology.exchange.name)

    def _declare(self, channel: Any, queue: NoCacheQueue) -> Optional[int]:
        """Declare ``queue``; how many ready messages it holds (None after a clash)."""
        try:
            ready = int(queue.queue_declare(channel=channel)[1])
            self.telemetry.count("queues_declared")
            return ready
        except PreconditionFailed as exc:
            revived(channel)
            # py-amqp has reopened the channel.  The queue exists, so the state
            # can still be stored in it: store it and say loudly what differs.
            self._mismatch(queue, exc)
            return None

    def _mismatch(self, queue: NoCacheQueue, exc: Exception) -> None:
        self._clashing[str(queue.name)] = True
        logger.error(self.topology.explain_mismatch(
            str(queue.name), str(exc), getattr(queue, "queue_arguments", None)))

    def _publish_stored(self, channel: Any, queue_name: str, body: bytes,
                        properties: Dict[str, Any]) -> bool:
        """Publish to the queue itself; False if the broker returned it (no such queue)."""
        returned = returns_of(channel)
        returned.clear()
        channel.basic_publish(
            amqp.Message(body, **properties), exchange="", routing_key=queue_name,
            mandatory=True)
        if queue_name in returned:
            self._clashing.pop(queue_name, None)
            return False
        return True
