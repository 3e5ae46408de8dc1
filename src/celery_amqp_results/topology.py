"""What the backend declares on the broker, with which arguments, and what a clash means.

Default topology (README "Broker topology"):

* one durable queue per task, ``<prefix>task.<task_id>``, that keeps only the
  newest state (``x-max-length=1`` + ``x-overflow=drop-head``) and goes away
  ``result_expires`` after its last use (``x-expires``).  States are published
  to it through the default exchange, each with an ``expires-at`` header
  ``result_expires`` after it was stored, past which readers treat it as gone;
* one exchange, ``result_exchange`` (durable), on which every state is
  published a second time with the task id as routing key, for waiters;
* one exclusive queue per waiting thread, bound to that exchange for the task
  ids it waits on while it waits;
* per native chord, a durable log of its finished parts (``<prefix>chord.<id>``)
  and a newest-only queue holding its size (``<prefix>chord-size.<id>``), both
  going away ``result_chord_expires`` (else ``result_expires``) after their last
  use, and deleted as soon as the chord's body has been sent.

With ``amqp_results_queue_type = "quorum"`` (docs/cluster.md) result queues and
group records are quorum queues, replicated over the cluster's nodes, their
leaders spread by ``x-queue-leader-locator=balanced``.  Waiter queues stay
classic and exclusive (quorum queues cannot be exclusive), and so do both chord
queues: RabbitMQ 3.10 accepts a second *exclusive* consumer on a quorum queue,
so the chord log's exclusive read would no longer let one process decide.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional

import kombu

from .naming import Names

#: Queue arguments that make a queue keep only the newest state.
NEWEST_ONLY = {"x-max-length": 1, "x-overflow": "drop-head"}

#: Header of every stored state: when it expires, in milliseconds since the epoch by
#: the storing process's clock.  A state has no broker-side TTL: one the broker
#: dropped would leave its queue empty, and readers could no longer tell an
#: expired result from one another reader holds (read.py).  Readers treat a
#: state past this time as gone; the queue's ``x-expires`` removes it later.
EXPIRES_AT = "expires-at"

#: Values of ``amqp_results_queue_type``: the kind of queue results are stored in.
QUEUE_TYPES = ("classic", "quorum")

#: A quorum queue's delivery limit: every read is a basic.get and a requeue, which
#: counts as a delivery.  RabbitMQ 4.0 gives quorum queues a default limit of 20 and
#: drops a message past it (measured: a stored state was gone after the 21st read);
#: 3.10 has no default but takes -1 as "drop after one", so -1 cannot mean "unlimited"
#: on both.  2**31 - 1 is accepted by both and outlasts ~68 years of 1 read/s.
QUORUM_DELIVERY_LIMIT = 2**31 - 1

#: Arguments that make a result queue a quorum queue whose leader is placed on the
#: node leading the fewest queues (RabbitMQ 3.10+; the default, ``client-local``,
#: would put every result on the node its storing process is connected to), with the
#: delivery limit above.
QUORUM = {"x-queue-type": "quorum", "x-queue-leader-locator": "balanced",
          "x-delivery-limit": QUORUM_DELIVERY_LIMIT}

#: Which setting decides each queue property, to name it when queues clash.
SETTING_FOR_ARGUMENT = {
    "x-queue-type": "amqp_results_queue_type",
    "x-queue-leader-locator": "amqp_results_queue_type",
    "x-delivery-limit": "amqp_results_queue_type",
    "x-expires": "result_expires and result_failure_expires",
    "x-max-length": "the result topology (queue keeps only the newest state)",
    "x-overflow": "the result topology (queue keeps only the newest state)",
    "durable": "the result topology (result queues are durable)",
    "auto_delete": "the result topology (result queues are not auto-delete)",
    "exclusive": "the result topology (result queues are not exclusive)",
}

_INEQUIVALENT = re.compile(r"inequivalent arg '([^']+)'")


class NoCacheQueue(kombu.Queue):
    """A kombu Queue whose declaration is never cached: it may have been deleted since."""

    can_cache_declaration = False


class Topology:
    """The broker entities for one set of settings; pure, no I/O."""

    def __init__(self, names: Names, exchange_name: str, exchange_type: str,
                 expires: Optional[float], persistent: bool,
                 chord_expires: Optional[float] = None, queue_type: str = "classic",
                 failure_expires: Optional[float] = None) -> None:
        if queue_type not in QUEUE_TYPES:
            raise ValueError(
                f"amqp_results_queue_type must be one of "
                f"{', '.join(map(repr, QUEUE_TYPES))}, got {queue_type!r}")
        if exchange_type == "headers":
            raise ValueError(
                "result_exchange_type 'headers' cannot route a state by task id: "
                "use 'direct' (the default), 'topic' or 'fanout'")
        self.names = names
        #: Seconds a state lives after it was stored (None: for ever): result_expires.
        self.expires = expires if expires and expires > 0 else None
        #: The same for a FAILURE state (result_failure_expires; None given: as
        #: result_expires).  Only FAILURE, as Celery's Redis backend does.
        failure = expires if failure_expires is None else failure_expires
        self.failure_expires = failure if failure and failure > 0 else None
        lifetimes = (self.expires, self.failure_expires)
        #: How long a result queue lives after its last use (its x-expires): the longer
        #: of the two, so the queue never cuts a state short, and never if either
        #: lives for ever.  A state's own end is its expires-at header, so the
        #: shorter one is not kept past its time either (readers treat it as gone).
        self.queue_expires: Optional[float] = (
            None if None in lifetimes else max(lifetimes))  # type: ignore[type-var]
        self.persistent = persistent
        self.delivery_mode = 2 if persistent else 1
        self.exchange = kombu.Exchange(
            exchange_name, exchange_type, durable=True, auto_delete=False)
        #: "classic" or "quorum": the type of result queues and group records.
        self.queue_type = queue_type
        self.queue_arguments: Dict[str, Any] = dict(NEWEST_ONLY)
        if queue_type == "quorum":
            self.queue_arguments.update(QUORUM)
        if self.queue_expires:
            self.queue_arguments["x-expires"] = max(1, round(self.queue_expires * 1000))
        chord_expires = chord_expires if chord_expires is not None else self.expires
        self.chord_arguments: Dict[str, Any] = {}
        if chord_expires and chord_expires > 0:
            self.chord_arguments["x-expires"] = max(1, round(chord_expires * 1000))

    @property
    def expires_ms(self) -> int:
        assert self.expires is not None
        return max(1, round(self.expires * 1000))

    def expires_at(self, state: str, now: float) -> Optional[int]:
        """The ``expires-at`` header of a ``state`` stored at ``now`` (epoch seconds), in
        milliseconds since the epoch; None if that state never expires."""
        lifetime = self.failure_expires if state == "FAILURE" else self.expires
        return None if lifetime is None else int(now * 1000) + max(1, round(lifetime * 1000))

    def storage_queue(self, queue_name: str) -> NoCacheQueue:
        """The durable newest-state-only queue called ``queue_name`` (quorum if so set)."""
        return self._durable(queue_name, self.queue_arguments)

    def chord_log_queue(self, queue_name: str) -> NoCacheQueue:
        """The durable queue logging a chord's finished parts: keeps every message."""
        return self._durable(queue_name, self.chord_arguments)

    def chord_size_queue(self, queue_name: str) -> NoCacheQueue:
        """The durable newest-only queue holding a chord's size."""
        return self._durable(queue_name, {**NEWEST_ONLY, **self.chord_arguments})

    @staticmethod
    def _durable(queue_name: str, arguments: Dict[str, Any]) -> NoCacheQueue:
        return NoCacheQueue(
            queue_name, exchange=kombu.Exchange(""), routing_key=queue_name,
            durable=True, auto_delete=False, queue_arguments=arguments)

    def explain_exchange_clash(self, reply_text: str) -> str:
        """A sentence for an exchange that exists with another type or durability."""
        exchange = self.exchange
        return (
            f"the result exchange {exchange.name!r} already exists with other properties "
            f"than this backend declares (type {exchange.type!r}, from "
            f"result_exchange_type; durable); broker said: {reply_text}. Another "
            f"application, an older result backend or a process with another "
            f"result_exchange_type declared it: give result_exchange another name, or "
            f"delete that exchange once nothing uses it")

    def explain_mismatch(self, queue_name: str, reply_text: str,
                         arguments: Optional[Dict[str, Any]] = None) -> str:
        """Turn RabbitMQ's PRECONDITION_FAILED text into a sentence naming the setting.

        ``arguments`` are those this process declared (default: a result queue's).
        """
        match = _INEQUIVALENT.search(reply_text)
        argument = match.group(1) if match else "unknown"
        setting = SETTING_FOR_ARGUMENT.get(argument, "a queue setting")
        if argument == "x-expires" and queue_name.startswith(self.names.chord_prefix):
            setting = "result_chord_expires (else result_expires)"
        mine = (self.queue_arguments if arguments is None else arguments).get(argument)
        return (
            f"result queue {queue_name!r} already exists with a different {argument!r} "
            f"(this process would declare {mine!r}; broker said: {reply_text}). "
            f"The setting that differs between processes is {setting}: every worker "
            f"and client sharing this vhost must use the same value.")
