"""Celery 4.4's result wire format: names, queue arguments, properties and body; no I/O.

Facts from Celery 4.4.7's ``celery/backends/amqp.py`` and the kombu 4.6.11 it ran on:

* ``rkey`` (amqp.py:102-103): the task id with dashes removed names the queue *and*
  is its routing key on the result exchange;
* the exchange (amqp.py:81-86): ``result_exchange``, ``result_exchange_type``,
  durable = ``result_persistent``, not auto-delete;
* the queue (amqp.py:88-97): durable = ``result_persistent``, auto-delete, bound to
  the exchange under its own name, ``x-expires`` = ``result_expires`` in integer
  milliseconds (kombu 4.6.11 ``kombu/utils/time.py:9-12``: ``int(float(s) * 1000)``);
* every state (amqp.py:117-141) is published to the exchange with delivery mode 2
  (1 if not persistent), ``correlation_id`` = the request's or the task id, priority
  0 and empty headers (kombu 4.6.11 ``Producer.publish``), no expiration, and a body
  with ``task_id, status, result, traceback, children`` and, with
  ``result_extended``, ``name, args, kwargs, worker, retries, queue``.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional

import kombu

from ..errors import InvalidTaskIdError
from ..naming import validate_id
from ..topology import NoCacheQueue

#: A state's fields in the order Celery 4.4's store_result wrote them.
FIELDS = ("task_id", "status", "result", "traceback", "children")

#: The fields ``result_extended`` added, in Celery 4.4's order.
EXTENDED_FIELDS = ("name", "args", "kwargs", "worker", "retries", "queue")

#: Exchange types that route a state by its task's routing key alone.
EXCHANGE_TYPES = ("direct", "topic")

#: Which setting decides each queue property, to name it when a declaration clashes.
SETTING_FOR_ARGUMENT = {
    "x-expires": "result_expires",
    "durable": "result_persistent",
    "auto_delete": "the queue's auto_delete (Celery 4 result queues are auto-delete)",
}

_INEQUIVALENT = re.compile(r"inequivalent arg '([^']+)'")


def queue_name(task_id: Any) -> str:
    """Celery 4's ``rkey``: the name (and routing key) of the queue of ``task_id``."""
    name = validate_id(task_id, "").replace("-", "")
    if not name:
        raise InvalidTaskIdError(
            f"task id {task_id!r} names no queue in the Celery 4 topology "
            f"(amqp_results_topology='celery4' removes the dashes of a task id)")
    return name


class Celery4Topology:
    """The broker entities and message layout Celery 4.4 used, for one set of settings."""

    def __init__(self, exchange_name: str, exchange_type: str, expires: Optional[float],
                 persistent: bool, auto_delete: bool = True) -> None:
        if exchange_type not in EXCHANGE_TYPES:
            raise ValueError(
                f"amqp_results_topology='celery4' routes each state by its task's "
                f"routing key: result_exchange_type must be 'direct' (Celery 4's "
                f"default) or 'topic', got {exchange_type!r}")
        self.persistent = persistent
        self.delivery_mode = 2 if persistent else 1
        self.auto_delete = auto_delete
        self.exchange = kombu.Exchange(
            exchange_name, exchange_type, durable=persistent, auto_delete=False,
            delivery_mode=self.delivery_mode)
        # Celery 4 passed result_expires to kombu, which sent int(seconds * 1000).
        # With 0 Celery 4 declared x-expires=0, which RabbitMQ refuses: here 0 and
        # None both mean "never expires", as in the default topology.
        self.queue_arguments: Dict[str, Any] = {}
        if expires and expires > 0:
            self.queue_arguments["x-expires"] = int(float(expires) * 1000)

    def result_queue(self, name: str) -> NoCacheQueue:
        """The queue called ``name`` (see ``queue_name``), bound under its own name."""
        return NoCacheQueue(
            name, exchange=self.exchange, routing_key=name, durable=self.persistent,
            auto_delete=self.auto_delete, queue_arguments=dict(self.queue_arguments))

    def properties(self, correlation_id: str, content_type: str,
                   content_encoding: str) -> Dict[str, Any]:
        """The AMQP properties of a stored state, as kombu 4.6 set them for Celery 4.4."""
        return {
            "content_type": content_type,
            "content_encoding": content_encoding,
            "application_headers": {},
            "priority": 0,
            "delivery_mode": self.delivery_mode,
            "correlation_id": correlation_id,
        }

    @staticmethod
    def body(task_id: str, meta: Dict[str, Any], extended: bool) -> Dict[str, Any]:
        """A state laid out as Celery 4.4 wrote it, then Celery 5's own fields.

        Celery 5 adds ``date_done`` (and ``group_id``/``parent_id`` when set); a
        Celery 4.4 reader ignores them and a Celery 5 reader gets ``date_done``.
        """
        body: Dict[str, Any] = {"task_id": task_id}
        for field in FIELDS[1:]:
            body[field] = meta.get(field)
        if extended:
            for field in EXTENDED_FIELDS:
                body[field] = meta.get(field)
        for key, value in meta.items():
            body.setdefault(key, value)
        return body

    @staticmethod
    def explain_transient_refused(name: str, reply_text: str) -> str:
        """A sentence for a broker that refuses Celery 4's transient result queues."""
        first = reply_text.splitlines()[0] if reply_text else reply_text
        return (
            f"the broker refused Celery 4 result queue {name!r}: with "
            f"result_persistent=False Celery 4 declared its result queues transient "
            f"(not durable, auto-delete, not exclusive), which RabbitMQ 4.x deprecates "
            f"and refuses from 4.3 on (or with deprecated_features.permit."
            f"transient_nonexcl_queues = false); broker said: {first}. Set "
            f"result_persistent=True in the Celery 4 fleet and every process with "
            f"amqp_results_topology='celery4' (durable queues, as Celery 4 then "
            f"declared them), or permit the feature on the broker")

    def explain_mismatch(self, name: str, reply_text: str) -> str:
        """Turn RabbitMQ's PRECONDITION_FAILED text into a sentence naming the setting."""
        match = _INEQUIVALENT.search(reply_text)
        argument = match.group(1) if match else "unknown"
        setting = SETTING_FOR_ARGUMENT.get(argument, "a queue setting")
        return (
            f"Celery 4 result queue {name!r} already exists with a different "
            f"{argument!r} (broker said: {reply_text}). The setting that differs is "
            f"{setting}: the Celery 4 fleet and every process with "
            f"amqp_results_topology='celery4' must use the same value.")
