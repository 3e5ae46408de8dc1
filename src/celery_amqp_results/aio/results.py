"""``AsyncResults``: the asyncio API for web applications.

Await one result with a deadline, await many in arrival order, iterate a task's
states as they arrive, all on one connection per instance and without a
thread per waiter.  Results are read the way the synchronous backend reads them
(peeked, never consumed), so any process can still read them afterwards.
"""
from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Dict, Iterable, Optional, Tuple

from aio_pika.abc import AbstractIncomingMessage
from celery import states

from ..backend import AMQPBackend
from ..codec import decode_state
from .connect import addresses
from .hub import Hub
from .wait import Wait

Meta = Dict[str, Any]

#: How many connections a single get_meta tries when each is lost under its peek.
READ_ATTEMPTS = 3


class AsyncResults:
    """asyncio access to the results of a Celery app that uses this package's backend.

    ``AsyncResults(app)`` (or the backend itself) opens nothing until first used,
    then keeps one connection to the backend's broker (same URL, vhost, TLS and
    failover list) and one exclusive waiter queue, shared by every concurrent
    call.  Use it from one event loop; close it with ``await close()`` or
    ``async with``.
    """

    def __init__(self, app: Any) -> None:
        backend = getattr(app, "backend", app)
        if not isinstance(backend, AMQPBackend):
            raise TypeError(
                f"AsyncResults needs a Celery app whose result backend is "
                f"celery_amqp_results.AMQPBackend (result_backend='amqp://...'), got "
                f"{type(backend).__module__}.{type(backend).__qualname__}")
        self.backend = backend
        self._names = backend.names
        #: The backend's spans and metrics (telemetry.py): reads and waits are recorded
        #: as the synchronous ones are.
        self._telemetry = backend.telemetry
        self._hub = Hub(addresses(backend.connection_template), backend.topology,
                        backend.settings.peek_attempts, backend.retry_policy)

    # -- reading -------------------------------------------------------------------------

    async def get_meta(self, task_id: str) -> Meta:
        """The newest state of ``task_id`` (PENDING if none), as ``backend.get_task_meta``.

        One peek: the state stays stored for every other reader.  A broker that
        cannot be reached is retried for ``amqp_results_read_timeout`` seconds at
        most, then ResultBrokerError, as the synchronous read does.
        """
        queue_name = self._names.task_queue(task_id)
        with self._telemetry.span("read", "receive", task_id, queue_name) as span:
            meta = await self._read(task_id, queue_name)
            self._telemetry.link_origin(span, task_id)
            return meta

    async def _read(self, task_id: str, queue_name: str) -> Meta:
        deadline = asyncio.get_running_loop().time() + self.backend.settings.read_timeout
        for attempt in range(READ_ATTEMPTS):
            link = await self._hub.link_by(deadline)
            try:
                message = await link.peeker.peek(queue_name)
                break
            except Exception:
                if not link.is_lost() or attempt == READ_ATTEMPTS - 1:
                    raise
                # The connection went away under the peek: read again on a new one
                # (the hub reconnects by the retry policy, and gives up by it too).
        if message is None:
            return {"status": states.PENDING, "result": None}
        return self._decode(task_id, message)

    async def get(self, task_id: str, timeout: Optional[float] = None,
                  propagate: bool = True) -> Any:
        """Wait until ``task_id`` is ready and return its result.

        ``timeout`` is a deadline in seconds: celery's ``TimeoutError`` past it,
        however many intermediate states arrive; ``0`` checks once.  A failed
        task raises its exception if ``propagate``, else returns it.
        """
        meta = await self.wait(task_id, timeout)
        if propagate and meta["status"] in states.PROPAGATE_STATES:
            raise meta["result"]
        return meta["result"]

    async def wait(self, task_id: str, timeout: Optional[float] = None) -> Meta:
        """Wait until ``task_id`` is ready and return its meta (never raises the task's error)."""
        queue_name = self._names.task_queue(task_id)  # InvalidTaskIdError before any I/O
        wait = Wait(self._hub, [task_id], timeout, self._decode)
        try:
            with self._telemetry.wait([task_id], timeout, queue_name) as record:
                while True:
                    _, meta = await wait.next()
                    record.state(task_id)
                    if meta["status"] in states.READY_STATES:
                        return meta
        finally:
            wait.close()

    async def as_completed(self, task_ids: Iterable[str], timeout: Optional[float] = None,
                           ) -> AsyncIterator[Tuple[str, Meta]]:
        """Yield ``(task_id, meta)`` for each task as it becomes ready, in arrival order.

        ``timeout`` is one deadline for all of them (``0``: yield what is ready,
        then TimeoutError if anything is not).  Failures are yielded, not raised.
        Break out early inside ``contextlib.aclosing`` to release at once.
        """
        ids = list(dict.fromkeys(task_ids))
        for task_id in ids:
            self._names.task_queue(task_id)  # every id checked before any I/O
        if not ids:
            return
        wait = Wait(self._hub, ids, timeout, self._decode)
        try:
            with self._telemetry.wait(ids, timeout) as record:
                while wait.pending:
                    task_id, meta = await wait.next()
                    record.state(task_id)
                    if meta["status"] in states.READY_STATES:
                        yield task_id, meta
        finally:
            wait.close()

    async def states(self, task_id: str, timeout: Optional[float] = None,
                     ) -> AsyncIterator[Meta]:
        """Yield each state of ``task_id`` announced from now on, ending with the ready one.

        A ready state already stored is yielded at once; a non-ready one already
        stored is not (``get_meta`` shows it), as for ``backend.consume``.
        ``timeout`` is one deadline for the whole iteration.
        """
        queue_name = self._names.task_queue(task_id)
        wait = Wait(self._hub, [task_id], timeout, self._decode)
        try:
            with self._telemetry.wait([task_id], timeout, queue_name) as record:
                while wait.pending:
                    _, meta = await wait.next()
                    record.state(task_id)
                    yield meta
        finally:
            wait.close()

    def _decode(self, task_id: str, message: AbstractIncomingMessage) -> Meta:
        """Decode a state like the synchronous backend, exceptions rebuilt safely."""
        self._telemetry.saw_headers(task_id, message.headers)
        meta = decode_state(task_id, self._names.task_queue(task_id), message.body,
                            message.content_type, message.content_encoding,
                            self.backend.accept)
        return self.backend.rebuild_meta(task_id, meta)

    # -- lifetime ------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection; calls still waiting raise RuntimeError (HubClosed)."""
        await self._hub.close()

    async def __aenter__(self) -> AsyncResults:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
