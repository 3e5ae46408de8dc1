"""One asyncio call's wait for some tasks: what is stored already, then what is pushed.

The order is the synchronous waiter's, so no state can slip through: first a
peek of every task (a finished task costs nothing more); then, for the tasks not
ready, bind the shared waiter queue to their ids, peek again (a state stored
before the binding is found there, one stored after it is announced), and sleep
until announcements arrive.  After a lost connection the wait binds and peeks
again on the new one.  One deadline (event-loop time) covers it all.
"""
from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional, Set, Tuple, TypeVar

from aio_pika.abc import AbstractIncomingMessage
from celery import states
from celery.exceptions import TimeoutError

from ..errors import ResultBrokerError
from .hub import Hub, HubClosed
from .link import Link

Meta = Dict[str, Any]
#: Turns a raw message holding a state of a task id into its meta (exceptions rebuilt).
Decoder = Callable[[str, AbstractIncomingMessage], Meta]

T = TypeVar("T")


class Wait:
    """The states of ``task_ids`` as they come: ``next()`` until ``pending`` is empty.

    ``next()`` returns a ready state found stored or pushed, and each non-ready
    state pushed after the wait was armed, in arrival order.  Call ``close()``
    when done, on every path: it only counts down, so it is safe in ``finally``
    of a cancelled task.
    """

    def __init__(self, hub: Hub, task_ids: List[str], timeout: Optional[float],
                 decode: Decoder) -> None:
        self._hub = hub
        self._order = list(dict.fromkeys(task_ids))
        self.pending: Set[str] = set(self._order)
        #: timeout=0 means "check once": that one check is not cut short by the deadline.
        self._once = timeout is not None and timeout <= 0
        self._deadline = None if timeout is None else \
            asyncio.get_running_loop().time() + max(timeout, 0)
        self._decode = decode
        #: (task id, message, found by a peek rather than pushed)
        self._inbox: Deque[Tuple[str, AbstractIncomingMessage, bool]] = deque()
        self._signal = asyncio.Event()
        self._checked = False
        #: The link this wait is bound on, and the ids it counted there.
        self._link: Optional[Link] = None
        self._bound: Set[str] = set()
        #: The link last used for anything: if it is lost, an error on it means "arm again".
        self._used: Optional[Link] = None

    async def next(self) -> Tuple[str, Meta]:
        """The next state of a pending task; celery's TimeoutError past the deadline."""
        while True:
            while self._inbox:
                task_id, message, peeked = self._inbox.popleft()
                if task_id not in self.pending:
                    continue
                meta = self._decode(task_id, message)
                if meta["status"] in states.READY_STATES:
                    self._finish(task_id)
                    return task_id, meta
                if not peeked:
                    return task_id, meta
                # A non-ready state found by a peek is from before the wait: the pushed
                # ones that follow it are what the caller sees, in order.
            if not self.pending:
                raise RuntimeError("Wait.next() called after every task was ready")
            try:
                if not self._checked:
                    await self._check()
                    continue
                left = self._left()
                if self._link is None or self._link.is_lost():
                    await self._arm()
                    continue
            except (TimeoutError, HubClosed):
                raise
            except Exception as exc:
                if self._used is not None and self._used.is_lost() and not (
                        isinstance(exc, ResultBrokerError) and not exc.retryable):
                    continue  # the connection went away meanwhile: arm again on a new one
                raise
            if self._inbox:
                continue
            self._signal.clear()
            try:
                await asyncio.wait_for(self._signal.wait(), left)
            except asyncio.TimeoutError:
                raise TimeoutError("The operation timed out.") from None

    # -- called by the hub ---------------------------------------------------------------

    def deliver(self, task_id: str, message: AbstractIncomingMessage) -> None:
        """An announcement for one of our tasks has arrived."""
        self._inbox.append((task_id, message, False))
        self._signal.set()

    def link_lost(self) -> None:
        """The shared connection is gone: wake up and arm again."""
        self._signal.set()

    # -- broker side ---------------------------------------------------------------------

    async def _check(self) -> None:
        """Peek every pending task once, before any binding: finished tasks end here.

        With ``timeout=0`` this is the whole call: it runs to its end (connecting
        without retries), bounded by the broker's answers rather than the deadline.
        """
        if self._once:
            self._used = link = await self._hub.link(retry=False)
            self._inbox.extend(await self._peek_all(link))
        else:
            self._used = link = await self._connected()
            self._inbox.extend(await self._within(self._peek_all(link)))
        self._checked = True

    async def _arm(self) -> None:
        """Bind the waiter queue to every pending id, then peek them again."""
        self._used = link = await self._connected()
        ids = [task_id for task_id in self._order if task_id in self.pending]
        bound = link.acquire(ids)  # counted at once, so close() can always count down
        self._link, self._bound = link, set(ids)
        self._hub.listen(self, self._bound)
        await self._within(asyncio.shield(bound))
        self._inbox.extend(await self._within(self._peek_all(link)))

    async def _peek_all(self, link: Link) -> List[Tuple[str, AbstractIncomingMessage, bool]]:
        names = self._hub.topology.names
        ids = [task_id for task_id in self._order if task_id in self.pending]
        messages = await asyncio.gather(
            *(link.peeker.peek(names.task_queue(task_id)) for task_id in ids))
        return [(task_id, message, True)
                for task_id, message in zip(ids, messages) if message is not None]

    async def _connected(self) -> Link:
        """The hub's link within the deadline; past it, a TimeoutError that says why.

        As the synchronous waiter words it: "The operation timed out: cannot use the
        result broker at ...", caused by the last failed try's underlying error.
        """
        try:
            return await self._within(self._hub.link())
        except TimeoutError:
            failure = self._hub.failure
            if failure is None:
                raise
            raise TimeoutError(f"The operation timed out: {failure}") from failure.__cause__

    async def _within(self, work: Awaitable[T]) -> T:
        """Await ``work`` within the deadline: celery's TimeoutError past it."""
        if self._deadline is None:
            return await work
        try:
            left = self._left()
        except TimeoutError:
            if asyncio.iscoroutine(work):
                work.close()  # never started: say so, or asyncio warns it was never awaited
            raise
        try:
            return await asyncio.wait_for(work, left)
        except asyncio.TimeoutError:
            raise TimeoutError("The operation timed out.") from None

    def _left(self) -> Optional[float]:
        """Seconds to the deadline (None: no deadline); TimeoutError if it has passed."""
        if self._deadline is None:
            return None
        left = self._deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise TimeoutError("The operation timed out.")
        return left

    # -- the end -------------------------------------------------------------------------

    def _finish(self, task_id: str) -> None:
        """``task_id`` is ready: stop waiting for it (its binding may go)."""
        self.pending.discard(task_id)
        if task_id in self._bound:
            self._bound.discard(task_id)
            self._hub.unlisten(self, {task_id})
            if self._link is not None:
                self._link.release([task_id])

    def close(self) -> None:
        """Release every binding this wait still counts; never awaits."""
        link, bound = self._link, self._bound
        self._link, self._bound = None, set()
        self._hub.unlisten(self, bound)
        self._hub.leave(self)
        if link is not None:
            link.release(bound)
