"""Writing states: each store is confirmed by the broker or raises, never dropped."""
from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Callable, Dict, Optional, TypeVar

import amqp
from amqp.exceptions import PreconditionFailed
from kombu.common import maybe_declare
from kombu.utils.functional import LRUCache, fxrange

from .channel import returns_of, revived
from .connection import ConnectionPool, broker_error, failures
from .errors import ResultStoreError
from .topology import NoCacheQueue, Topology

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How many task ids a process remembers having declared a queue for.
DECLARED_CACHE_SIZE = 10_000


class Store:
    """Stores states in per-task queues and announces them to waiters.

    A state is published to its task's queue through the default exchange,
    ``mandatory`` and confirmed; then, once the broker has confirmed it, it is
    published again on the notify exchange for waiters.  That order means a
    waiter that bound its queue and then peeked cannot miss a state: if the
    peek came too early for the stored copy, the announcement came after the
    binding.  The queue is declared on the first state a process stores for a
    task; if it has since vanished (forgotten, expired), the broker returns
    the state and it is declared and published again.
    """

    def __init__(self, pool: ConnectionPool, topology: Topology,
                 retry_policy: Dict[str, Any]) -> None:
        self.pool = pool
        self.topology = topology
        self.retry_policy = retry_policy
        self._declared = LRUCache(limit=DECLARED_CACHE_SIZE)

    def run(self, operation: Callable[[Any], T]) -> T:
        """Run ``operation(channel)`` on a pooled connection, retrying by the retry policy.

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
        with self.pool.acquire() as conn:
            for retries in itertools.count():
                try:
                    conn.ensure_connection(max_retries=0)  # one attempt, no sleep
                    return operation(conn.default_channel)
                except failures(conn) as exc:
                    error = broker_error(conn, exc)
                    if not error.retryable or (
                            max_retries is not None and retries >= max_retries):
                        raise error from exc
                    conn.collect()
                    conn.maybe_switch_next()  # failover URLs: the next host, as ensure did
                    time.sleep(min(float(next(intervals)), interval_max))
        raise AssertionError("unreachable")  # pragma: no cover

    def put(self, task_id: str, state: str, queue_name: str, routing_key: Optional[str],
            body: bytes, content_type: str, content_encoding: str) -> None:
        """Store one state of ``task_id`` in ``queue_name``; announce it under ``routing_key``."""
        properties = self._properties(task_id, content_type, content_encoding, expire=True)
        queue = self.topology.storage_queue(queue_name)

        def operation(channel: Any) -> None:
            self._publish(channel, queue, body, properties, task_id, state, create=True)
            if routing_key is not None:
                channel.basic_publish(
                    amqp.Message(body, **properties),
                    exchange=self._exchange(channel), routing_key=routing_key)

        self.run(operation)

    def put_in(self, queue: NoCacheQueue, task_id: str, state: str, body: bytes,
               content_type: str, content_encoding: str, *, create: bool) -> bool:
        """Publish a message that never expires to ``queue``, confirmed.

        With ``create`` the queue is declared if needed; without, a missing queue
        makes this return False and publishes nothing (the chord log is gone).
        """
        properties = self._properties(task_id, content_type, content_encoding, expire=False)
        return self.run(lambda channel: self._publish(
            channel, queue, body, properties, task_id, state, create=create))

    def _properties(self, task_id: str, content_type: str, content_encoding: str,
                    expire: bool) -> Dict[str, Any]:
        properties: Dict[str, Any] = {
            "content_type": content_type,
            "content_encoding": content_encoding,
            "delivery_mode": self.topology.delivery_mode,
            "correlation_id": task_id,
        }
        if expire and self.topology.message_expiration:
            properties["expiration"] = self.topology.message_expiration
        return properties

    def _publish(self, channel: Any, queue: NoCacheQueue, body: bytes,
                 properties: Dict[str, Any], task_id: str, state: str, create: bool) -> bool:
        """Publish to ``queue`` through the default exchange, mandatory and confirmed.

        A nack raises ResultStoreError.  A return (no such queue) declares the
        queue and publishes again if ``create``, else answers False.
        """
        queue_name = str(queue.name)
        try:
            if create and queue_name not in self._declared:
                # The declaration goes out without waiting for its answer: the
                # publish behind it on the same channel is routed only after the
                # broker has created the queue, and its confirm answers for both.
                if self._declare_and_publish(channel, queue, body, properties):
                    return True
            elif self._publish_stored(channel, queue_name, body, properties):
                return True
            if not create:
                return False
            # The queue went away since we declared it: declare it again.
            self._declare(channel, queue)
            if self._publish_stored(channel, queue_name, body, properties):
                return True
        except amqp.exceptions.MessageNacked as exc:
            # Caught here: kombu would re-raise it as a connection error.
            raise ResultStoreError(
                f"the broker refused (nack) the {state} state of task {task_id!r} "
                f"in queue {queue_name!r}", task_id=task_id, state=state) from exc
        raise ResultStoreError(
            f"the broker returned the {state} state of task {task_id!r} as "
            f"unroutable twice: queue {queue_name!r} vanished right after "
            f"being declared", task_id=task_id, state=state)

    def _declare_and_publish(self, channel: Any, queue: NoCacheQueue, body: bytes,
                             properties: Dict[str, Any]) -> bool:
        """Declare ``queue`` (no wait) and publish into it: one round trip, not two."""
        queue_name = str(queue.name)
        try:
            queue.queue_declare(nowait=True, channel=channel)
            self._declared[queue_name] = True
            return self._publish_stored(channel, queue_name, body, properties)
        except PreconditionFailed as exc:
            # The declaration clashed with the existing queue's arguments: the
            # broker closed the channel (dropping the publish behind it) and
            # py-amqp reopened it.  The queue exists: store into it and say so.
            revived(channel)
            self._mismatch(queue, exc)
            return self._publish_stored(channel, queue_name, body, properties)

    def delete(self, queue_name: str) -> None:
        """Delete a stored result for everyone (no error if it is already gone)."""
        def operation(channel: Any) -> None:
            channel.queue_delete(queue=queue_name)
            self._declared.pop(queue_name, None)
        self.run(operation)

    def _exchange(self, channel: Any) -> str:
        maybe_declare(self.topology.exchange, channel)
        return str(self.topology.exchange.name)

    def _declare(self, channel: Any, queue: NoCacheQueue) -> None:
        queue_name = str(queue.name)
        try:
            queue.queue_declare(channel=channel)
        except PreconditionFailed as exc:
            revived(channel)
            # py-amqp has reopened the channel.  The queue exists, so the state
            # can still be stored in it: store it and say loudly what differs.
            self._mismatch(queue, exc)
        self._declared[queue_name] = True

    def _mismatch(self, queue: NoCacheQueue, exc: Exception) -> None:
        self._declared[str(queue.name)] = True
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
            self._declared.pop(queue_name, None)
            return False
        return True
