"""``Celery4Backend``: ``AMQPBackend`` in the Celery 4 compatible topology.

``AMQPBackend(app)`` returns one when ``amqp_results_topology = "celery4"``.  Only
where states live and how they are read and waited for differ; the seed API,
connections, retries, errors and group records are the default topology's.
"""
from __future__ import annotations

import os
import weakref
from typing import Any, Dict, List, Optional, Tuple

import kombu
from celery import states
from celery.backends.base import BaseBackend
from celery.exceptions import SecurityError

from ..backend import AMQPBackend
from ..errors import UnsafeResultError
from ..topology import NoCacheQueue
from .read import newest_state
from .store import Celery4Store
from .topology import Celery4Topology
from .topology import queue_name as celery4_queue
from .wait import Celery4Waiter

Meta = Dict[str, Any]


class Celery4Backend(AMQPBackend):
    """Stores and reads states as Celery 4.4's ``amqp`` backend did (celery4/topology.py).

    Reads never consume: a poll keeps the newest state and drops older ones (as
    Celery 4's poll did); a wait listens on a queue of its own.  A Celery 4 client's
    ``get()`` still consumes the task's auto-delete queue and so deletes the result.
    Chords run through ``celery.chord_unlock``, as in Celery 4, so a chord completes
    whichever fleet runs its tasks.  ``GroupResult.save()`` keeps its record as in the
    default topology (Celery 4 could not save groups).
    """

    def __init__(self, app: Any, connection: Optional[kombu.Connection] = None,
                 exchange: Optional[str] = None, exchange_type: Optional[str] = None,
                 persistent: Optional[bool] = None, serializer: Optional[str] = None,
                 auto_delete: bool = True, **kwargs: Any) -> None:
        super().__init__(app, connection=connection, exchange=exchange,
                         exchange_type=exchange_type, persistent=persistent,
                         serializer=serializer, auto_delete=auto_delete, **kwargs)
        self.celery4 = Celery4Topology(
            str(self.topology.exchange.name), str(self.topology.exchange.type),
            self.expires, self.persistent, auto_delete)
        self.exchange = self.celery4.exchange
        self._celery4_store = Celery4Store(self._store.run, self.celery4)
        self._celery4_waiters: weakref.WeakSet[Celery4Waiter] = weakref.WeakSet()

    # -- naming (seed API) -------------------------------------------------------------------

    def rkey(self, task_id: str) -> str:
        """Celery 4's routing key and queue name: the task id without dashes."""
        return celery4_queue(task_id)

    def destination_for(self, task_id: str, request: Any) -> Tuple[str, str]:
        """``(queue name, correlation id)`` a state of ``task_id`` is stored under."""
        correlation_id = getattr(request, "correlation_id", None) or task_id
        return celery4_queue(task_id), correlation_id

    def on_reply_declare(self, task_id: str) -> List[NoCacheQueue]:
        """Entities declared before each state of ``task_id`` is stored."""
        return [self.celery4.result_queue(celery4_queue(task_id))]

    # -- storing -----------------------------------------------------------------------------

    def _store_result(self, task_id: str, result: Any, state: str, traceback: Any = None,
                      request: Any = None, **kwargs: Any) -> Any:
        name, correlation_id = self.destination_for(task_id, request)
        meta = self._get_result_meta(result=result, state=state, traceback=traceback,
                                     request=request)
        extended = bool(self.app.conf.find_value_for_key("extended", "result"))
        body = self.celery4.body(task_id, meta, extended)
        serialized = self._serialize(body)
        with self._telemetry.span("store", "send", task_id, name, "task", {
                "celery.state": state, "messaging.message.body.size": len(serialized[0])}):
            self._celery4_store.put(task_id, state, name, correlation_id, *serialized)
        self._telemetry.count("states_stored", 1, {"celery.state": state})
        return result

    def _forget(self, task_id: str) -> None:
        name = celery4_queue(task_id)
        with self._telemetry.span("forget", "settle", task_id, name):
            self._celery4_store.delete(name)
        self._telemetry.count("queues_deleted")

    # -- reading -----------------------------------------------------------------------------

    def _get_task_meta_for(self, task_id: str) -> Meta:
        name = celery4_queue(task_id)
        # No link to a store span: Celery 4 states carry no trace context.
        with self._telemetry.span("read", "receive", task_id, name):
            meta = self._store.run(lambda channel: self._read_newest(channel, name, task_id))
        if meta is None:
            return {"status": states.PENDING, "result": None}
        return self._rebuild(task_id, meta)

    def _read_newest(self, channel: Any, name: str, task_id: str) -> Optional[Meta]:
        return newest_state(channel, name, task_id, self._decode, self.settings.peek_grace)

    def _decode(self, task_id: str, message: Any, queue_name: Optional[str] = None) -> Meta:
        return super()._decode(task_id, message, queue_name or celery4_queue(task_id))

    def _rebuild(self, task_id: str, meta: Meta) -> Meta:
        try:
            return self.meta_from_decoded(meta)
        except SecurityError as exc:
            queue = celery4_queue(task_id)
            raise UnsafeResultError(
                f"result of task {task_id!r} names a failure type Celery refuses to "
                f"rebuild: {exc}; the message stays in Celery 4 queue {queue!r}",
                task_id=task_id, queue=queue, cause=exc) from exc

    # -- waiting -----------------------------------------------------------------------------

    # The base class's wait_for, consume and get_many only call states() on what this
    # returns; its annotation names the default topology's Waiter.
    def _waiter(self) -> Celery4Waiter:  # type: ignore[override]
        """This thread's waiter (its own connection); a fresh one after fork."""
        local = self._local
        waiter = getattr(local, "celery4_waiter", None)
        if waiter is None or local.celery4_pid != os.getpid():
            if waiter is not None:
                waiter.forget_after_fork()
            waiter = Celery4Waiter(self._template.clone, self.celery4, self._read_newest,
                                   self._decode, self.retry_policy)
            local.celery4_waiter, local.celery4_pid = waiter, os.getpid()
            if self._pid != os.getpid():  # first waiter in a forked child
                self._celery4_waiters, self._pid = weakref.WeakSet(), os.getpid()
            self._celery4_waiters.add(waiter)
        return waiter

    # -- chords: through celery.chord_unlock, as in Celery 4 ------------------------------------

    def apply_chord(self, header_result_args: Any, body: Any, **kwargs: Any) -> None:
        """Send ``celery.chord_unlock``, which polls the header and then sends the body.

        Native chords need every worker to report its part; a Celery 4 worker never
        does, so during a migration the chord is unlocked by polling, as Celery 4 did.
        """
        BaseBackend.apply_chord(self, header_result_args, body, **kwargs)

    def set_chord_size(self, group_id: str, chord_size: int) -> None:
        """Nothing to record: ``celery.chord_unlock`` is given the header itself."""

    def on_chord_part_return(self, request: Any, state: str, result: Any,
                             **kwargs: Any) -> None:
        """Nothing to do: ``celery.chord_unlock`` polls the header's results."""

    def add_to_chord(self, group_id: str, result: Any) -> None:
        """Refused: a chord unlocked by polling has a fixed header."""
        raise NotImplementedError(
            f"Task.add_to_chord (chord {group_id!r}) needs native chords, which "
            f"amqp_results_topology='celery4' does not use: chords run through "
            f"celery.chord_unlock as in Celery 4. Switch to the default topology "
            f"(docs/migrating-from-celery4.md) to use it.")

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close this process's connections, the Celery 4 waiters' too."""
        if self._pid == os.getpid():
            for waiter in list(self._celery4_waiters):
                waiter.close()
        self._celery4_waiters = weakref.WeakSet()
        super().close()
