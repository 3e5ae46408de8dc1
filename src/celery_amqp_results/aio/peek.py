"""Reading a task's newest stored state without taking it away, from asyncio.

The same peek as ``read.py``: ``basic.get`` without ack, then ``basic.nack`` with
requeue at once.  ``basic.get`` answers one call at a time per channel, and a
missing queue (the task has no state: PENDING) makes the broker close the
channel, so peeks run on a small pool of channels and a closed one is replaced.
A replacement never takes a number freed a moment ago (see ``_open``).
Each peek runs shielded from the caller's cancellation (``background.py``).
As in ``read.peek``, a queue that exists with nothing ready is read again a
number of times (``amqp_results_peek_attempts``), never for a span of time, and
a state past its ``expires-at`` is no state.
"""
from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Optional, Set

import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from ..read import FIRST_PAUSE, LONGEST_PAUSE, headers_expired
from .background import retrieve, shielded

#: How many peeks run at once on one connection (one channel each).
DEFAULT_CHANNELS = 16

#: Channel number of the link's own waiter channel; peeks use the numbers above it.
WAITER_CHANNEL = 1

#: Highest channel number when the broker sets no limit (AMQP numbers are 16-bit).
AMQP_CHANNEL_MAX = 65535


class Peeker:
    """Peeks result queues over one connection with at most ``channels`` in flight."""

    def __init__(self, connection: AbstractConnection, attempts: int,
                 channels: int = DEFAULT_CHANNELS) -> None:
        if channels < 1:
            raise ValueError(f"channels must be at least 1, got {channels!r}")
        self._connection = connection
        self._attempts = max(attempts, 1)
        self._idle: List[AbstractChannel] = []
        self._slots = asyncio.Semaphore(channels)
        self._in_use: Set[int] = set()
        #: aiormq's channel under each aio-pika channel in use, by number.
        self._underlay: Dict[int, Any] = {}
        self._last = _channel_max(connection)
        if self._last <= WAITER_CHANNEL + channels:
            raise ValueError(
                f"the broker allows {self._last} channels per connection; the asyncio "
                f"results client needs more than {WAITER_CHANNEL + channels}")
        self._next = WAITER_CHANNEL + 1

    async def peek(self, queue_name: str) -> Optional[AbstractIncomingMessage]:
        """The newest message of ``queue_name``, left in the queue; None if there is none
        or it has expired.

        An existing but empty queue is read up to ``attempts`` times in all: another
        reader may hold its message for an instant (see ``read.peek``).
        """
        message = await shielded(self._peek(queue_name))
        if message is None or headers_expired(message.headers):
            return None
        return message

    async def _peek(self, queue_name: str) -> Optional[AbstractIncomingMessage]:
        pause = FIRST_PAUSE
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(pause)
                pause = min(pause * 2, LONGEST_PAUSE)
            async with self._slots:
                channel = self._idle.pop() if self._idle else await self._open()
                try:
                    queue = await channel.get_queue(queue_name, ensure=False)
                    message = await queue.get(no_ack=False, fail=False, timeout=None)
                    if message is not None:
                        await message.nack(requeue=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    self._forget_getter(channel.number or 0)
                    self._in_use.discard(channel.number or 0)
                    return None  # no such queue: the broker has closed this channel
                except BaseException:
                    self._in_use.discard(channel.number or 0)
                    self._underlay.pop(channel.number or 0, None)
                    raise
                if channel.is_closed:
                    self._in_use.discard(channel.number or 0)
                    self._underlay.pop(channel.number or 0, None)
                else:
                    self._idle.append(channel)
            if message is not None:
                return message
        return None

    async def _open(self) -> AbstractChannel:
        """A new channel whose number was not used recently.

        aiormq frees a channel's number as soon as the broker closes the channel
        (every peek of a missing queue does), before it has sent the close-ok; a
        channel opened at once under that number makes the broker close the whole
        connection ("second 'channel.open' seen").  So numbers go round the whole
        range the broker allows, skipping those in use.
        """
        for _ in range(self._last):
            number = self._next
            self._next = number + 1 if number < self._last else WAITER_CHANNEL + 1
            if number in self._in_use:
                continue
            try:
                channel = await self._connection.channel(
                    channel_number=number, publisher_confirms=False)
            except ValueError:
                continue  # aiormq still holds this number: try the next one
            self._in_use.add(number)
            # aiormq 6 (aio-pika 9) stores the broker's close of this channel (a missing
            # queue) in a future nobody awaits, and asyncio logs it as unretrieved.
            underlay = await channel.get_underlay_channel()
            self._underlay[number] = underlay
            closing = getattr(underlay, "closing", None)
            if isinstance(closing, asyncio.Future):
                closing.add_done_callback(retrieve)
            return channel
        raise RuntimeError("no free channel number on the result broker connection")

    def _forget_getter(self, number: int) -> None:
        """After the broker closed channel ``number`` on a basic.get: aiormq 6.8 (the
        newest for Python 3.9) leaves that get's reply future behind and rejects it when
        the channel closes; nobody awaits it, so asyncio would log it as unretrieved."""
        getter = getattr(self._underlay.pop(number, None), "getter", None)
        if isinstance(getter, asyncio.Future):
            getter.add_done_callback(retrieve)

    async def close(self) -> None:
        """Close the idle channels (the connection's close would take them anyway)."""
        idle, self._idle = self._idle, []
        for channel in idle:
            if not channel.is_closed:
                await channel.close()



def _channel_max(connection: AbstractConnection) -> int:
    """The highest channel number the broker allows on ``connection``."""
    # aio-pika does not expose the negotiated tune; aiormq keeps it on its connection.
    underlay = getattr(getattr(connection, "transport", None), "connection", None)
    tune = getattr(underlay, "connection_tune", None)
    limit = int(getattr(tune, "channel_max", 0) or 0)
    return min(limit, AMQP_CHANNEL_MAX) if limit > 0 else AMQP_CHANNEL_MAX
