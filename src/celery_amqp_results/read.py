"""Reading the newest stored state without taking it away from anyone."""
from __future__ import annotations

import time
from typing import Any, Optional

from amqp.exceptions import NotFound

from .channel import nack_requeue, revived

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
    deadline: Optional[float] = None
    pause = FIRST_PAUSE
    while True:
        try:
            message = channel.basic_get(queue=queue_name, no_ack=False)
        except NotFound:
            # py-amqp has already reopened the channel the broker closed.
            revived(channel)
            return None
        if message is not None:
            nack_requeue(channel, message.delivery_info["delivery_tag"])
            return message
        now = time.monotonic()
        if deadline is None:
            deadline = now + grace
        if now >= deadline:
            return None
        time.sleep(min(pause, deadline - now))
        pause = min(pause * 2, LONGEST_PAUSE)
