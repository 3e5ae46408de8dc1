"""``AMQPBackend``: the Celery-facing class.  It stays thin and delegates.

Names and signatures follow ``celery.backends.amqp.AMQPBackend`` of Celery 3.1
and 4.4; behaviour follows SPEC section 3 where the original differed (reading
never destroys a result, the URL is honoured, timeouts are deadlines).
"""
from __future__ import annotations

import logging
import operator
import os
import threading
import time
import weakref
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import kombu
from celery import states
from celery.backends.base import BaseBackend
from celery.exceptions import SecurityError
from celery.result import GroupResult, result_from_tuple
from celery.signals import before_task_publish
from kombu.utils.functional import LRUCache

from . import connection as conn_mod
from .chordlog import ChordLog
from .chords import NativeChords
from .codec import compression_method, decode_state, encode_state
from .errors import (
    BacklogLimitExceeded,
    ResultBrokerError,
    ResultTooLargeError,
    UnsafeResultError,
)
from .naming import Names
from .read import expired, peek
from .settings import Settings, read_topology
from .store import Store
from .telemetry import Telemetry, Wait
from .topology import NoCacheQueue, Topology
from .waiter import Waiter, drain

Meta = Dict[str, Any]

logger = logging.getLogger(__name__)

#: Seconds after sending a task within which a wait for it skips its first peek: a
#: task this young is almost never finished (waiter.py, ``_arm``).
JUST_SENT = 0.05

#: How many recently sent task ids a process remembers for JUST_SENT.
SENT_CACHE_SIZE = 1000


#: Every backend of this process, for the one ``before_task_publish`` receiver below.
_BACKENDS: weakref.WeakSet[AMQPBackend] = weakref.WeakSet()


def _pre_arm(sender: Any = None, **kwargs: Any) -> None:
    """``before_task_publish``: each backend pre-arms the task if it is its thread's.

    One receiver for all backends: Celery 5.3 tells receivers apart by their function
    alone, so a bound method of each backend would register only the first backend's.
    """
    for backend in list(_BACKENDS):
        backend._before_publish(**kwargs)


before_task_publish.connect(_pre_arm, weak=False, dispatch_uid="celery_amqp_results.pre_arm")


def runs_task_in_worker(request: Any) -> bool:
    """True when ``request`` is a task a worker is executing (not eager, not a client)."""
    return (request is not None and getattr(request, "called_directly", True) is False
            and not getattr(request, "is_eager", False))


class AMQPBackend(BaseBackend):
    """Celery result backend keeping each task's newest state in its own RabbitMQ queue.

    ``auto_delete`` is accepted for compatibility and kept, but result queues are
    never auto-delete: a result must outlive whoever reads it.  ``no_ack`` is
    accepted wherever the seeds show it and changes nothing: reads never consume.
    """

    #: Exception raised by bounded fast-forward reads (see errors.BacklogLimitExceeded).
    BacklogLimitExceeded = BacklogLimitExceeded

    #: kombu's classes, as the original exposed them.
    Exchange = kombu.Exchange
    Queue = NoCacheQueue
    Consumer = kombu.Consumer
    Producer = kombu.Producer

    persistent = True
    supports_autoexpire = True
    supports_native_join = True
    #: result_compression (Celery 5.7): a message body holds any bytes unchanged.
    supports_result_compression = True
    #: result_failure_expires (Celery 5.7): a FAILURE's expires-at header (topology.py).
    supports_failure_expires = True

    retry_policy = {
        "max_retries": 20,
        "interval_start": 0,
        "interval_step": 1,
        "interval_max": 1,
    }

    def __new__(cls, app: Any, *args: Any, **kwargs: Any) -> AMQPBackend:
        """With ``amqp_results_topology = "celery4"``, a Celery4Backend (celery4/)."""
        if cls is AMQPBackend and read_topology(app.conf) == "celery4":
            from .celery4.backend import Celery4Backend
            cls = Celery4Backend
        return super().__new__(cls)

    def __init__(self, app: Any, connection: Optional[kombu.Connection] = None,
                 exchange: Optional[str] = None, exchange_type: Optional[str] = None,
                 persistent: Optional[bool] = None, serializer: Optional[str] = None,
                 auto_delete: bool = True, **kwargs: Any) -> None:
        super().__init__(app, serializer=serializer, **kwargs)
        conf = self.app.conf
        #: A per-instance copy: never shared mutable state between backends.
        self.retry_policy = dict(type(self).retry_policy)
        self.settings = Settings.from_conf(conf)
        #: result_compression, honoured on every Celery version (Celery 5.3 to 5.6 do
        #: not know the setting; 5.7 checked it already).
        self.compression = compression_method(conf)
        self.persistent = self.prepare_persistent(persistent)
        self.auto_delete = auto_delete
        self.names = Names(self.settings.queue_prefix)
        self.topology = Topology(
            self.names,
            exchange or conf.result_exchange,
            exchange_type or conf.result_exchange_type,
            self.expires, self.persistent, self._chord_expires(),
            queue_type=self.settings.queue_type, failure_expires=self._failure_expires())
        self.exchange = self.topology.exchange
        self._connection_arg = connection
        self._template = conn_mod.make_connection(app, self.url, connection, self.settings.ssl)
        self._pool = conn_mod.ConnectionPool(
            self._template.clone, conf.get("broker_pool_limit") or 10)
        #: Spans and metrics (telemetry.py): nothing without opentelemetry-api.
        self._telemetry = Telemetry(self._template.hostname, self._template.port, self.names)
        self._store = Store(self._pool, self.topology, self.retry_policy, self._telemetry)
        self._chords = NativeChords(self, ChordLog(
            self._store, self.topology, self.names, self.settings.peek_attempts))
        self._local = threading.local()
        #: Every thread's waiter in this process, so close() reaches them all.
        self._waiters: weakref.WeakSet[Waiter] = weakref.WeakSet()
        self._pid = os.getpid()
        #: Task ids this process sent lately, with when (time.monotonic()).
        self._sent = LRUCache(limit=SENT_CACHE_SIZE)
        _BACKENDS.add(self)

    # -- naming (seed API) -------------------------------------------------------------------

    def rkey(self, task_id: str) -> str:
        """Routing key under which the states of ``task_id`` are announced."""
        return self.names.routing_key(task_id)

    def destination_for(self, task_id: str, request: Any) -> Tuple[str, str]:
        """``(queue name, correlation id)`` a state of ``task_id`` is stored under."""
        correlation_id = getattr(request, "correlation_id", None) or task_id
        return self.names.task_queue(task_id), correlation_id

    def on_reply_declare(self, task_id: str) -> List[NoCacheQueue]:
        """Entities declared before the first state of ``task_id`` is stored."""
        return [self.topology.storage_queue(self.names.task_queue(task_id))]

    def revive(self, channel: Any) -> None:
        """Nothing to revive: every operation takes a fresh channel from the pool."""

    def as_uri(self, include_password: bool = False) -> str:
        """The backend URL, password masked unless ``include_password``."""
        url = self.url or "amqp://"
        if include_password or conn_mod.is_bare(url):
            return url
        return conn_mod.sanitize(url)

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Celery sends ``task_id`` now: remembered, so a wait right after skips a peek."""
        self._sent[task_id] = time.monotonic()

    def _before_publish(self, headers: Optional[Dict[str, Any]] = None,
                        properties: Optional[Dict[str, Any]] = None, body: Any = None,
                        **kwargs: Any) -> None:
        """A task this thread sends with its waiter queue as reply queue is pre-armed,
        so waiting for it binds nothing (waiter.py).  Must never raise: it runs inside
        ``apply_async``."""
        waiter = getattr(self._local, "waiter", None)
        if waiter is None or self._local.pid != os.getpid() or not waiter.direct:
            return
        reply = self.names.reply_queue((properties or {}).get("reply_to"))
        if reply is None or reply != waiter.queue_name:
            return
        task_id = (headers or {}).get("id")
        if task_id is None and isinstance(body, dict):
            task_id = body.get("id")  # task protocol 1
        if isinstance(task_id, str):
            waiter.pre_arm(task_id)

    def _just_sent(self, task_id: str) -> bool:
        sent = self._sent.pop(task_id, None)
        return sent is not None and time.monotonic() - sent < JUST_SENT

    # -- storing -----------------------------------------------------------------------------

    def store_result(self, task_id: str, result: Any, state: str, traceback: Any = None,
                     request: Any = None, **kwargs: Any) -> Any:
        """Celery's ``store_result``; in a worker, a result broker it cannot use is logged.

        Raised there, the error takes Celery's internal-error path: a traceback in the
        pool child, then the main process storing a FAILURE on the broker that just
        refused (for as long as the retry policy lasts, its event loop blocked).  The
        state is lost either way; one error line per task names the broker and says so.
        A client (no worker request) gets the exception.
        """
        try:
            return super().store_result(task_id, result, state, traceback, request, **kwargs)
        except ResultBrokerError as exc:
            if not runs_task_in_worker(request):
                raise
            logger.error("task %s[%s]: its %s state was not stored: %s",
                         getattr(request, "task", None) or "?", task_id, state, exc)
            return result

    def _store_result(self, task_id: str, result: Any, state: str, traceback: Any = None,
                      request: Any = None, **kwargs: Any) -> Any:
        queue_name = self.names.task_queue(task_id)
        meta = self._get_result_meta(result=result, state=state, traceback=traceback,
                                     request=request)
        if meta.get("date_done") is not None:
            # Celery 5.3 stores a naive utcnow(); 5.4+ the app's aware now(): store
            # the latter on every version, so readers always get an offset.
            meta["date_done"] = self.app.now().isoformat()
        meta["task_id"] = task_id
        self._put("store", task_id, state, queue_name, self.rkey(task_id), meta,
                  self.names.reply_queue(getattr(request, "reply_to", None)))
        return result

    def _put(self, operation: str, task_id: str, state: str, queue_name: str,
             routing_key: Optional[str], meta: Meta,
             reply_queue: Optional[str] = None) -> None:
        """Serialize and store one state, in a span carrying the trace it was stored in."""
        body, content_type, content_encoding = self._serialize(meta)
        of = "group" if operation == "save_group" else "task"
        with self._telemetry.span(operation, "send", task_id, queue_name, of, {
                "celery.state": state, "messaging.message.body.size": len(body)}):
            headers: Dict[str, Any] = {}
            self._telemetry.inject(headers)
            self._store.put(task_id, state, queue_name, routing_key, body, content_type,
                            content_encoding, headers=headers, reply_queue=reply_queue)
        self._telemetry.count("states_stored", 1, {"celery.state": state})

    def _serialize(self, meta: Meta) -> Tuple[bytes, str, str]:
        """Serialize a state once; refuse it before publishing if it is too large."""
        body, content_type, content_encoding = encode_state(
            meta, self.serializer, self.compression)
        limit = self.settings.max_result_size
        if limit is not None and len(body) > limit:
            raise ResultTooLargeError(
                f"the {meta['status']} state of task {meta['task_id']!r} is {len(body)} "
                f"bytes serialized, over amqp_results_max_result_size ({limit} bytes); "
                f"nothing was stored", task_id=meta["task_id"], state=meta["status"])
        return body, content_type, content_encoding

    def exception_safe_to_retry(self, exc: BaseException) -> bool:
        """Connection-level failures may be retried (``result_backend_always_retry``)."""
        if isinstance(exc, ResultBrokerError):
            return exc.retryable
        return isinstance(exc, tuple(self._template.recoverable_connection_errors))

    def _forget(self, task_id: str) -> None:
        queue_name = self.names.task_queue(task_id)
        with self._telemetry.span("forget", "settle", task_id, queue_name):
            self._store.delete(queue_name)

    # -- reading -----------------------------------------------------------------------------

    def get_task_meta(self, task_id: str, backlog_limit: int = 1000,
                      cache: bool = True) -> Meta:
        """The newest state of ``task_id``; PENDING if none is stored.  Never removes it."""
        if backlog_limit < 1:
            raise ValueError(f"backlog_limit must be at least 1, got {backlog_limit!r}")
        return super().get_task_meta(task_id, cache=cache)

    poll = get_task_meta

    def task_result_exists(self, task_id: str) -> bool:
        """True if a state of ``task_id`` is stored (``AsyncResult.exists()``, Celery 5.7)."""
        return self._get_task_meta_for(task_id)["status"] != states.PENDING

    def _get_task_meta_for(self, task_id: str) -> Meta:
        meta = self._peek_meta(self.names.task_queue(task_id), task_id)
        if meta is None:
            return {"status": states.PENDING, "result": None}
        return self._rebuild(task_id, meta)

    @property
    def telemetry(self) -> Telemetry:
        """This backend's spans and metrics (telemetry.py)."""
        return self._telemetry

    @property
    def connection_template(self) -> kombu.Connection:
        """The kombu Connection (URL, TLS, failover hosts) backend connections are cloned from."""
        return self._template

    def rebuild_meta(self, task_id: str, meta: Meta) -> Meta:
        """A decoded state with its exception rebuilt, as ``AsyncResult`` shows it.

        Raises UnsafeResultError (a SecurityError naming the task) for a failure
        type Celery refuses to rebuild.
        """
        return self._rebuild(task_id, meta)

    def _rebuild(self, task_id: str, meta: Meta) -> Meta:
        """Celery's ``meta_from_decoded`` (exceptions rebuilt), with errors naming the task."""
        try:
            return self.meta_from_decoded(meta)
        except SecurityError as exc:
            queue = self.names.task_queue(task_id)
            raise UnsafeResultError(
                f"result of task {task_id!r} names a failure type Celery refuses to "
                f"rebuild: {exc}; the message stays in queue {queue!r}",
                task_id=task_id, queue=queue, cause=exc) from exc

    def _peek_meta(self, queue_name: str, task_id: str,
                   operation: str = "read") -> Optional[Meta]:
        """The state stored in ``queue_name``, None if none or expired.

        A broker that cannot be reached is retried for ``amqp_results_read_timeout``
        seconds at most, then ResultBrokerError: a read must not hang a web request.
        """
        attempts = self.settings.peek_attempts
        deadline = time.monotonic() + self.settings.read_timeout
        of = "group" if operation == "restore_group" else "task"
        with self._telemetry.span(operation, "receive", task_id, queue_name, of) as span:
            message = self._store.run(lambda channel: peek(channel, queue_name, attempts),
                                      deadline, name=operation)
            if message is None or expired(message):
                return None
            meta = self._decode(task_id, message, queue_name)
            self._telemetry.link_origin(span, task_id)
            return meta

    def _decode(self, task_id: str, message: Any, queue_name: Optional[str] = None) -> Meta:
        """Decode a raw message holding a state of ``task_id`` (stored in ``queue_name``)."""
        self._telemetry.saw(task_id, message)
        return decode_state(task_id, queue_name or self.names.task_queue(task_id),
                            message.body, message.properties.get("content_type"),
                            message.properties.get("content_encoding"), self.accept)

    # -- waiting -----------------------------------------------------------------------------

    def _waiter(self) -> Waiter:
        """This thread's waiter (its own connection and queue); a fresh one after fork."""
        local = self._local
        waiter = getattr(local, "waiter", None)
        if waiter is None or local.pid != os.getpid():
            if waiter is not None:
                waiter.forget_after_fork()
            waiter = Waiter(self._template.clone, self.topology, self._decode,
                            self.settings.peek_attempts, self.retry_policy,
                            self.names.reply_queue(self.app.thread_oid))
            local.waiter, local.pid = waiter, os.getpid()
            if self._pid != local.pid:  # first waiter in a forked child
                self._waiters, self._pid = weakref.WeakSet(), local.pid
            self._waiters.add(waiter)
        return waiter

    def consume(self, task_id: str, timeout: Optional[float] = None, no_ack: bool = True,
                on_interval: Optional[Callable[[], Any]] = None) -> Iterator[Meta]:
        """Yield each state of ``task_id`` as it arrives, ending with the ready one."""
        with self._wait([task_id], timeout) as wait:
            for _, meta in self._waiter().states([task_id], timeout, on_interval):
                wait.state(task_id)
                yield self._remember(task_id, meta)

    def wait_for(self, task_id: str, timeout: Optional[float] = None, cache: bool = True,
                 propagate: bool = True, no_ack: bool = True,
                 on_interval: Optional[Callable[[], Any]] = None,
                 READY_STATES: frozenset = states.READY_STATES,
                 PROPAGATE_STATES: frozenset = states.PROPAGATE_STATES,
                 on_message: Optional[Callable[[Meta], Any]] = None,
                 **kwargs: Any) -> Meta:
        """Wait until ``task_id`` is ready and return its meta; raise its error if asked.

        ``timeout`` is a deadline (``0`` checks once): celery's TimeoutError past it.
        """
        meta: Meta = (self._cache.get(task_id) if cache else None) or {}
        if meta.get("status") not in READY_STATES:
            with self._wait([task_id], timeout) as wait:
                for _, state in self._waiter().states([task_id], timeout, on_interval,
                                                      self._just_sent(task_id)):
                    wait.state(task_id)
                    if on_message is not None:
                        on_message(state)
                    meta = self._remember(task_id, state)
        if propagate and meta["status"] in PROPAGATE_STATES:
            raise meta["result"]
        return meta

    def wait_for_pending(self, result: Any, timeout: Optional[float] = None,
                         interval: float = 0.5, no_ack: bool = True,
                         on_message: Optional[Callable[[Meta], Any]] = None,
                         on_interval: Optional[Callable[[], Any]] = None,
                         callback: Optional[Callable[..., Any]] = None,
                         propagate: bool = True) -> Any:
        """What ``AsyncResult.get`` calls: wait pushed, with one deadline, then return."""
        self._ensure_not_eager()
        meta = self.wait_for(result.id, timeout=timeout, propagate=False,
                             on_interval=on_interval, on_message=on_message)
        result._maybe_set_cache(meta)
        return result.maybe_throw(propagate=propagate, callback=callback)

    def get_many(self, task_ids: Iterable[str], timeout: Optional[float] = None,
                 no_ack: bool = True, on_message: Optional[Callable[[Meta], Any]] = None,
                 on_interval: Optional[Callable[[], Any]] = None,
                 now: Callable[[], float] = time.monotonic,
                 getfields: Callable[[Meta], Any] = operator.itemgetter("status", "task_id"),
                 READY_STATES: frozenset = states.READY_STATES,
                 PROPAGATE_STATES: frozenset = states.PROPAGATE_STATES,
                 interval: float = 0.5, max_iterations: Optional[int] = None,
                 **kwargs: Any) -> Iterator[Tuple[str, Meta]]:
        """Yield ``(task_id, meta)`` for each task as it becomes ready, in arrival order.

        ``timeout`` is one deadline for the whole join.  ``max_iterations=1`` (what
        ``ResultSet`` uses to look without waiting) yields only what is ready now.
        """
        order = list(dict.fromkeys(task_ids))
        ids = set(order)
        for task_id in sorted(ids):
            self.names.task_queue(task_id)  # validate every id before waiting
            cached = self._cache.get(task_id)
            if cached and cached["status"] in READY_STATES:
                ids.discard(task_id)
                yield task_id, cached
        if not ids:
            return
        if max_iterations is not None and max_iterations <= 1:
            for task_id in sorted(ids):
                meta = self.get_task_meta(task_id, cache=False)
                if meta["status"] in READY_STATES:
                    yield task_id, self._remember(task_id, meta, decoded=True)
            return
        with self._wait(ids, timeout) as wait:
            for task_id, meta in self._waiter().states(
                    [task_id for task_id in order if task_id in ids], timeout, on_interval):
                wait.state(task_id)
                if on_message is not None:
                    on_message(meta)
                if meta["status"] in READY_STATES:
                    yield task_id, self._remember(task_id, meta)

    def _wait(self, task_ids: Iterable[str], timeout: Optional[float]) -> Wait:
        """A wait's span and metrics (telemetry.py); its queue named if it is one task's."""
        ids = list(task_ids)
        return self._telemetry.wait(
            ids, timeout, self.names.task_queue(ids[0]) if len(ids) == 1 else None)

    def drain_events(self, connection: Any, consumer: Any, timeout: Optional[float] = None,
                     on_interval: Optional[Callable[[], Any]] = None,
                     now: Callable[[], float] = time.monotonic,
                     wait: Optional[Callable[..., Any]] = None) -> Dict[str, Meta]:
        """Drain ``connection`` until ``consumer`` receives ready states; return them by id.

        ``timeout`` is one deadline for the whole call: celery's TimeoutError past it.
        """
        results: Dict[str, Meta] = {}

        def callback(meta: Meta, message: Any) -> None:
            if meta["status"] in states.READY_STATES:
                results[meta["task_id"]] = self.meta_from_decoded(meta)

        consumer.callbacks[:] = [callback]
        deadline = None if timeout is None else now() + timeout
        drain(connection, deadline, lambda: bool(results), on_interval, wait, now)
        self._cache.update(results)
        return results

    def _remember(self, task_id: str, meta: Meta, decoded: bool = False) -> Meta:
        if not decoded:
            meta = self._rebuild(task_id, meta)
        if meta["status"] in states.READY_STATES:
            self._cache[task_id] = meta
        return meta

    # -- groups ------------------------------------------------------------------------------

    def _save_group(self, group_id: str, result: GroupResult) -> GroupResult:
        queue_name = self.names.group_queue(group_id)
        meta = {"task_id": group_id, "status": states.SUCCESS,
                "result": result.as_tuple(), "date_done": self.app.now().isoformat()}
        self._put("save_group", group_id, states.SUCCESS, queue_name, None, meta)
        return result

    def _restore_group(self, group_id: str) -> Optional[Meta]:
        meta = self._peek_meta(self.names.group_queue(group_id), group_id, "restore_group")
        if meta is None:
            return None
        meta["result"] = result_from_tuple(meta["result"], self.app)
        return meta

    def _delete_group(self, group_id: str) -> None:
        queue_name = self.names.group_queue(group_id)
        with self._telemetry.span("delete_group", "settle", group_id, queue_name, "group"):
            self._store.delete(queue_name)

    # -- native chords (chords.py): no chord_unlock task ----------------------------------------

    def _failure_expires(self) -> Optional[float]:
        """``result_failure_expires`` (Celery 5.7) in seconds; None if not set."""
        expires = self.app.conf.get("result_failure_expires")
        if expires is None:
            return None
        try:
            if isinstance(expires, bool):
                raise TypeError
            return float(self.prepare_expires(expires, type=float))
        except (TypeError, ValueError):
            raise ValueError(f"result_failure_expires must be seconds (a number or a "
                             f"timedelta), got {expires!r}") from None

    def _chord_expires(self) -> Optional[float]:
        """``result_chord_expires`` (Celery 5.7) if set, else ``result_expires``."""
        expires = self.app.conf.get("result_chord_expires")
        return self.expires if expires is None else self.prepare_expires(expires, type=float)

    def apply_chord(self, header_result_args: Any, body: Any, **kwargs: Any) -> None:
        """Create the chord's log before its header is sent; its last part sends the body."""
        self.ensure_chords_allowed()
        self._chords.apply(header_result_args)

    def set_chord_size(self, group_id: str, chord_size: int) -> None:
        """Record how many header tasks the chord waits for."""
        self._chords.set_size(group_id, chord_size)

    def add_to_chord(self, group_id: str, result: Any) -> None:
        """Make the chord wait for one more task (``Task.add_to_chord``)."""
        self._chords.add(group_id, result.id)

    def on_chord_part_return(self, request: Any, state: str, result: Any,
                             **kwargs: Any) -> None:
        """Record a finished header task; the last one sends the chord's body, once."""
        self._chords.part_returned(request, state, result)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Close this process's connections: the pool and every thread's waiter."""
        if self._pid == os.getpid():
            for waiter in list(self._waiters):
                waiter.close()
        self._waiters = weakref.WeakSet()
        self._local = threading.local()
        self._pool.close()

    def __reduce__(self, args: tuple = (), kwargs: Optional[Dict[str, Any]] = None) -> Any:
        kwargs = dict(kwargs or {})
        kwargs.update(
            connection=self._connection_arg if self.url is None else None,
            exchange=self.exchange.name, exchange_type=self.exchange.type,
            persistent=self.persistent, serializer=self.serializer,
            auto_delete=self.auto_delete, expires=self.expires, url=self.url)
        return super().__reduce__(args, kwargs)
