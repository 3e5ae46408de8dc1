"""Reading the newest stored state without taking it away from anyone."""
from __future__ import annotations

import time
from typing import Any, Callable, Optional, TypeVar

from amqp.exceptions import NotFound

from .channel import nack_requeue, revived

T = TypeVar("T")

#: First and longest pause, in seconds, between reads of a queue found empty.
FIRST_PAUSE = 0.0005
LONGEST_PAUSE = 0.005


def peek(channel: Any, queue_name: str, grace: float) -> Optional[Any]:
    """Return the newest message of ``queue_name`` (left in the queue), or None if none.

    The message is fetched with ``basic.get`` and requeued at once, before it is
    even decoded, so the time another reader finds the queue empty is short.
    A missing queue answers None at once.  A queue exists only once a state was
    stored in it, so an existing but empty queue means another reader holds the
    message (for longer when that reader's process is descheduled on a busy
    machine) or the message expired: read again for up to ``grace`` seconds.
    """
    def get_and_requeue() -> Optional[Any]:
        message = channel.basic_get(queue=queue_name, no_ack=False)
        if message is not None:
            nack_requeue(channel, message.delivery_tag)
        return message

    return within_grace(channel, get_and_requeue, grace)


def within_grace(channel: Any, read: Callable[[], Optional[T]], grace: float) -> Optional[T]:
    """``read()`` until it finds something, for up to ``grace`` seconds after the first miss.

    None at once if the queue does not exist (``read`` raised NotFound: the broker
    closed ``channel`` and py-amqp reopened it).  Pauses grow from 0.5 ms to 5 ms.
    """
    deadline: Optional[float] = None
    pause = FIRST_PAUSE
    while True:
        try:
            found = read()
        except NotFound:
            revived(channel)
            return None
        if found is not None:
            return found
        now = time.monotonic()
        if deadline is None:
            deadline = now + grace
        if now >= deadline:
            return None
        time.sleep(min(pause, deadline - now))
        pause = min(pause * 2, LONGEST_PAUSE)
