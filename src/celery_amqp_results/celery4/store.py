"""Storing and forgetting states in the Celery 4 topology, each store confirmed."""
from __future__ import annotations

import logging
from typing import Any, Callable, TypeVar

import amqp
from amqp.exceptions import InternalError, PreconditionFailed
from kombu.common import maybe_declare

from ..channel import returns_of, revived
from ..errors import ResultBrokerError, ResultStoreError
from .topology import Celery4Topology

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Runs ``operation(channel)`` on a pooled connection with the retry policy (Store.run).
Runner = Callable[[Callable[[Any], T]], T]


class Celery4Store:
    """Stores states where a Celery 4.4 worker stored them, as it stored them.

    Like Celery 4, every store declares the task's queue and its binding before
    publishing (a Celery 4 client's ``get()`` may have auto-deleted the queue since
    the last state), then publishes to the exchange under the queue's name.  Unlike
    Celery 4, the publish is ``mandatory`` and confirmed: a nack or a state routed
    nowhere raises instead of vanishing.
    """

    def __init__(self, run: Runner, topology: Celery4Topology) -> None:
        self._run = run
        self.topology = topology

    def put(self, task_id: str, state: str, name: str, correlation_id: str, body: bytes,
            content_type: str, content_encoding: str) -> None:
        """Store one state of ``task_id`` in queue ``name``; returns once confirmed."""
        properties = self.topology.properties(correlation_id, content_type, content_encoding)
        exchange = str(self.topology.exchange.name)

        def operation(channel: Any) -> None:
            returned = returns_of(channel)
            # Twice at most: a queue auto-deleted between our declaration and the
            # publish (a Celery 4 client's get() ending right then) returns the state.
            for _ in range(2):
                self._declare(channel, name)
                returned.clear()
                try:
                    channel.basic_publish(
                        amqp.Message(body, **properties), exchange=exchange,
                        routing_key=name, mandatory=True)
                except amqp.exceptions.MessageNacked as exc:
                    raise ResultStoreError(
                        f"the broker refused (nack) the {state} state of task "
                        f"{task_id!r} in Celery 4 queue {name!r}",
                        task_id=task_id, state=state) from exc
                if name not in returned:
                    return
            raise ResultStoreError(
                f"the broker returned the {state} state of task {task_id!r} as "
                f"unroutable twice: Celery 4 queue {name!r} vanished right after being "
                f"declared and bound", task_id=task_id, state=state)

        self._run(operation)

    def delete(self, name: str) -> None:
        """Delete a stored result for everyone (no error if it is already gone)."""
        self._run(lambda channel: channel.queue_delete(queue=name))

    def _declare(self, channel: Any, name: str) -> None:
        """Declare the exchange (once per connection), the queue and its binding."""
        topology = self.topology
        try:
            maybe_declare(topology.exchange, channel)
        except PreconditionFailed as exc:
            # It exists with another durability: it still routes, so store anyway
            # (py-amqp has reopened the channel) and say loudly what differs.
            revived(channel)
            logger.error(
                "result exchange %r already exists with other properties (broker said: "
                "%s); result_persistent decides its durability and must be the same "
                "in the Celery 4 fleet and here", topology.exchange.name, exc)
        queue = topology.result_queue(name)
        try:
            queue.queue_declare(channel=channel)
        except InternalError as exc:
            if "transient_nonexcl_queues" not in str(exc):
                raise
            raise ResultBrokerError(topology.explain_transient_refused(name, str(exc)),
                                    retryable=False) from exc
        except PreconditionFailed as exc:
            revived(channel)
            logger.error(topology.explain_mismatch(name, str(exc)))
        queue.queue_bind(channel=channel)
