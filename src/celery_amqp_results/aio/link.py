"""One broker connection of the asyncio API: its waiter queue, its bindings, its peeks.

The connection owns one exclusive queue, consumed from the moment it is opened
(it only receives anything while bound).  Bindings to the notify exchange are
counted per task id: the first waiter of an id binds it, the last one to leave
unbinds it.  Binds and unbinds run in the order they were asked for, one at a
time, in a task of the link's own, so a waiter that is cancelled only has to
count down (no await) and can never interrupt an RPC halfway.  That task is
never cancelled either: aiormq closes a channel whose RPC is cancelled (and logs
a warning), so on close the binder finishes the RPC in flight and skips the rest.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterable, Optional, Tuple

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
)

from ..topology import Topology
from .background import retrieve
from .peek import WAITER_CHANNEL, Peeker

logger = logging.getLogger(__name__)

#: Called with (task id, message) for every announcement the waiter queue receives.
OnMessage = Callable[[str, AbstractIncomingMessage], None]
#: Called once with the cause when the link breaks (connection or channel lost).
OnLost = Callable[[BaseException], None]


#: Longest wait on close for the bind or unbind in flight to be answered.
BINDER_STOP_TIMEOUT = 5.0


class LinkLost(ConnectionError):
    """The link's connection or its waiter channel went away; waiters must re-arm."""


class Link:
    """An open connection with its waiter queue, counted bindings and peek channels."""

    def __init__(self, connection: AbstractConnection, channel: AbstractChannel,
                 exchange: AbstractExchange, queue: AbstractQueue, peeker: Peeker,
                 on_lost: OnLost) -> None:
        self.connection = connection
        self.peeker = peeker
        self._channel = channel
        self._exchange = exchange
        self._queue = queue
        self._on_lost = on_lost
        #: How many waiters want each task id bound, and the future of its bind.
        self._count: Dict[str, int] = {}
        self._bound: Dict[str, asyncio.Future] = {}
        self._ops: Deque[Tuple[str, str, Optional[asyncio.Future]]] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.lost: Optional[BaseException] = None
        self._closing = False
        self._shutting: Optional[asyncio.Future] = None
        self._binder = asyncio.ensure_future(self._run_binder())

    @classmethod
    async def open(cls, connection: AbstractConnection, topology: Topology, queue_name: str,
                   peek_attempts: int, on_message: OnMessage, on_lost: OnLost) -> Link:
        """Declare the exchange and the exclusive waiter queue on ``connection``; consume it."""
        channel = await connection.channel(channel_number=WAITER_CHANNEL,
                                           publisher_confirms=False)
        exchange = await channel.declare_exchange(
            str(topology.exchange.name), aio_pika.ExchangeType(topology.exchange.type),
            durable=True, auto_delete=False)
        # Exclusive, so it goes with the connection; consumed for the link's whole life.
        queue = await channel.declare_queue(queue_name, durable=False, exclusive=True,
                                            auto_delete=False)
        link = cls(connection, channel, exchange, queue, Peeker(connection, peek_attempts), on_lost)

        async def deliver(message: AbstractIncomingMessage) -> None:
            task_id = message.correlation_id or message.routing_key
            if task_id:
                on_message(task_id, message)

        await queue.consume(deliver, no_ack=True)
        connection.close_callbacks.add(link._closed)
        channel.close_callbacks.add(link._closed)
        return link

    # -- bindings ------------------------------------------------------------------------

    def acquire(self, task_ids: Iterable[str]) -> asyncio.Future:
        """Count one more waiter for each id; a future done once all of them are bound.

        Await it through ``asyncio.shield``: the binds it waits for are shared.
        """
        if self.is_lost():
            raise LinkLost(f"result broker connection lost: {self.lost}")
        loop = asyncio.get_running_loop()
        waits = []
        for task_id in task_ids:
            count = self._count.get(task_id, 0)
            self._count[task_id] = count + 1
            if count == 0:
                future = loop.create_future()
                self._bound[task_id] = future
                self._queue_op("bind", task_id, future)
            waits.append(self._bound[task_id])
        everything = asyncio.gather(*waits)
        everything.add_done_callback(retrieve)  # its waiter may have timed out meanwhile
        return everything

    def release(self, task_ids: Iterable[str]) -> None:
        """Count one waiter less for each id; unbind those nobody waits for any more.

        Never awaits, so a cancelled waiter can call it from ``finally``.
        """
        if self.lost is not None:
            return  # the bindings went with the connection
        for task_id in task_ids:
            count = self._count.get(task_id, 0)
            if count > 1:
                self._count[task_id] = count - 1
            elif count == 1:
                del self._count[task_id]
                del self._bound[task_id]
                self._queue_op("unbind", task_id, None)

    def bound(self) -> Dict[str, int]:
        """Task ids currently bound (or being bound) and how many waiters want each."""
        return dict(self._count)

    async def settled(self) -> None:
        """Wait until every bind and unbind asked for so far has been answered."""
        await self._idle.wait()

    def _queue_op(self, kind: str, task_id: str, future: Optional[asyncio.Future]) -> None:
        self._ops.append((kind, task_id, future))
        self._idle.clear()
        self._wake.set()

    async def _run_binder(self) -> None:
        """Run binds and unbinds in the order asked, one at a time, until the link ends."""
        while True:
            if self._closing or self.lost is not None:
                # What is left needs no RPC: the exclusive queue and its bindings go
                # with the connection.
                self._fail_queued(LinkLost("the link was closed"))
                self._idle.set()
                return
            if not self._ops:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            kind, task_id, future = self._ops.popleft()
            try:
                if kind == "bind":
                    await self._queue.bind(self._exchange, routing_key=task_id)
                else:
                    await self._queue.unbind(self._exchange, routing_key=task_id)
            except Exception as exc:
                if future is not None and not future.done():
                    future.set_exception(LinkLost(f"cannot bind {task_id!r}: {exc}"))
                self._break(exc)
                return
            if future is not None and not future.done():
                future.set_result(None)

    # -- lifetime ------------------------------------------------------------------------

    def is_lost(self) -> bool:
        """True once the link is lost (or closed); waiters must then arm on a new one.

        Also notices a connection that is closed before its close callback ran, so
        an error seen on it is never mistaken for one on a healthy link.
        """
        if self.lost is None and self.connection.is_closed and not self._closing:
            self._break(LinkLost("the result broker connection is closed"))
        return self.lost is not None

    def _closed(self, sender: Any = None, exc: Optional[BaseException] = None,
                *args: Any) -> None:
        if not self._closing:
            self._break(exc or LinkLost("the result broker closed the connection"))

    def _break(self, exc: BaseException) -> None:
        """Mark the link lost once: fail pending binds, tell the owner, drop the connection."""
        if self.lost is not None:
            return
        self.lost = exc
        logger.warning("asyncio result waiter lost its broker link (%s); "
                       "waiters reconnect", exc)
        failure = LinkLost(f"result broker connection lost: {exc}")
        for future in self._bound.values():
            if not future.done():
                future.set_exception(failure)
                future.exception()  # retrieved: nobody may be left to await it
        self._fail_queued(failure)
        self._count.clear()
        self._bound.clear()
        self._idle.set()
        self._on_lost(exc)
        if not self._closing:
            self._closing = True
            self._shutting = asyncio.ensure_future(self._shut())

    def _fail_queued(self, failure: BaseException) -> None:
        """Drop the binds and unbinds not run yet; whoever awaits a bind gets ``failure``."""
        for _, _, queued in self._ops:
            if queued is not None and not queued.done():
                queued.set_exception(failure)
                queued.exception()  # retrieved: nobody may be left to await it
        self._ops.clear()

    async def _shut(self) -> None:
        self._wake.set()  # the binder sees the loss and ends; an RPC in flight fails
        try:
            await self.connection.close()
        except Exception:  # pragma: no cover - best effort on a broken connection
            pass

    async def _stop_binder(self) -> None:
        """Let the binder finish its RPC in flight (if any) and end, without cancelling it."""
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._binder), BINDER_STOP_TIMEOUT)
        except asyncio.TimeoutError:  # pragma: no cover - a broker that stopped answering
            self._binder.cancel()
        except Exception:  # pragma: no cover - its failure was handled by _break
            pass

    async def close(self) -> None:
        """Close the connection; its exclusive queue and bindings go with it."""
        self._closing = True
        if self.lost is None:
            self.lost = LinkLost("closed")
        try:
            await self._stop_binder()
            await self.peeker.close()
        finally:
            if not self.connection.is_closed:
                await self.connection.close()
