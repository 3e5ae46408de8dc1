"""The shared part of every asyncio wait: one link to the broker and who waits for what.

All waits of one ``AsyncResults`` share one connection and one waiter queue (no
thread, no connection per waiter).  The hub opens the link on first use and
again after a loss, hands each announcement to the waits that want its task,
and wakes every wait when the link is lost so it binds and peeks again.
"""
from __future__ import annotations

import asyncio
import uuid
from typing import Any, Dict, List, Mapping, Optional, Protocol, Set

from aio_pika.abc import AbstractIncomingMessage

from ..errors import ResultBrokerError
from ..topology import Topology
from .background import retrieve as _retrieve
from .connect import Address, connect_any
from .link import Link


class Listener(Protocol):
    """What the hub needs of a wait."""

    def deliver(self, task_id: str, message: AbstractIncomingMessage) -> None: ...

    def link_lost(self) -> None: ...


class HubClosed(RuntimeError):
    """The AsyncResults was closed; it cannot wait any more."""


class Hub:
    """One event loop's connection for waits, opened lazily, reopened after a loss."""

    def __init__(self, candidates: List[Address], topology: Topology, peek_attempts: int,
                 retry_policy: Mapping[str, Any]) -> None:
        self._candidates = candidates
        self.topology = topology
        self._peek_attempts = peek_attempts
        self._policy = dict(retry_policy)
        self.queue_name = f"{topology.names.waiter_prefix}{uuid.uuid4().hex}"
        self._link: Optional[Link] = None
        self._opening: Optional[asyncio.Future] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._routes: Dict[str, Set[Listener]] = {}
        self._listeners: Set[Listener] = set()
        self.closed = False
        #: Why the last try to connect failed, until a connection opens: a caller
        #: whose deadline passes while the retries go on names this cause.
        self.failure: Optional[ResultBrokerError] = None

    async def link(self, retry: bool = True) -> Link:
        """The open link; connecting first if there is none (or it was lost).

        All callers share one connection attempt, which retries by the backend's
        retry policy (``retry=False``: one try per broker address).  Each caller
        awaits it through a shield, so its own deadline or cancellation leaves
        the attempt running for the others.
        """
        self._check_loop()
        link = self._link
        if link is not None and not link.is_lost():
            return link
        opening = self._opening
        if opening is None or opening.done():
            self._opening = opening = asyncio.ensure_future(self._open(retry))
            opening.add_done_callback(_retrieve)
        return await asyncio.shield(opening)

    async def _open(self, retry: bool) -> Link:
        policy = self._policy if retry else dict(self._policy, max_retries=0)
        connection = await connect_any(
            self._candidates, f"celery-amqp-results asyncio {self.queue_name}", policy, None,
            on_failure=self._failed)
        try:
            link = await Link.open(connection, self.topology, self.queue_name,
                                   self._peek_attempts, self._deliver, self._lost)
        except BaseException:
            await connection.close()
            raise
        if self.closed:
            await link.close()
            raise HubClosed("AsyncResults is closed")
        self._link, self.failure = link, None
        return link

    def _failed(self, error: ResultBrokerError) -> None:
        self.failure = error

    async def link_by(self, deadline: float) -> Link:
        """``link()``, but a ResultBrokerError once event-loop time passes ``deadline``.

        The connection attempt goes on for the other callers; the error is the last
        try's (its cause the underlying error), as the synchronous read reports it.
        """
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(self.link(), max(deadline - loop.time(), 0.001))
        except asyncio.TimeoutError as exc:
            failure = self.failure
            if failure is None:
                # No try has failed yet: the broker is slow to answer the first one.
                raise ResultBrokerError(
                    f"cannot use the result broker at {self._candidates[0].describe()}: "
                    f"timed out") from exc
            raise ResultBrokerError(*failure.args) from failure.__cause__

    def _check_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise RuntimeError(
                "this AsyncResults is used from another event loop than the one it "
                "connected in; make one AsyncResults per event loop")
        if self.closed:
            raise HubClosed("AsyncResults is closed")

    # -- routing ---------------------------------------------------------------------------

    def listen(self, listener: Listener, task_ids: Set[str]) -> None:
        """Send ``listener`` the announcements of ``task_ids`` (adds to what it had)."""
        self._listeners.add(listener)
        for task_id in task_ids:
            self._routes.setdefault(task_id, set()).add(listener)

    def unlisten(self, listener: Listener, task_ids: Set[str]) -> None:
        """Stop sending ``listener`` the announcements of ``task_ids``."""
        for task_id in task_ids:
            listeners = self._routes.get(task_id)
            if listeners is not None:
                listeners.discard(listener)
                if not listeners:
                    del self._routes[task_id]

    def leave(self, listener: Listener) -> None:
        """Forget ``listener`` entirely (its wait is over)."""
        self._listeners.discard(listener)

    def _deliver(self, task_id: str, message: AbstractIncomingMessage) -> None:
        for listener in tuple(self._routes.get(task_id, ())):
            listener.deliver(task_id, message)

    def _lost(self, exc: BaseException) -> None:
        self._routes.clear()
        for listener in tuple(self._listeners):
            listener.link_lost()

    # -- lifetime ------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the link; waits still running end with HubClosed."""
        self.closed = True
        link, self._link = self._link, None
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()
        self._routes.clear()
        for listener in tuple(self._listeners):
            listener.link_lost()
        if link is not None:
            await link.close()
