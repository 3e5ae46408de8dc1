"""Reading the newest stored state without taking it away from anyone.

A read is a ``basic.get`` that holds the message until it is put back, so a second
reader that asks in between finds the queue empty.  How long that hold lasts is
what decides whether concurrent readers are ever told PENDING for a stored state.
Here the requeue (``basic.nack`` of everything unacknowledged, requeue) is written
to the socket together with the ``basic.get``, in one write: the broker handles
the two frames one after the other, so the hold lasts as long as the broker takes
to read the next frame of the same channel, however late this process gets to run
again on a busy machine.

A queue exists only once a state was stored in it, and a stored state stays in it
until a newer one replaces it or the queue goes (states do not expire on the
broker; readers compare ``expires-at``, see store.py).  So a queue that exists
but has nothing ready means another reader's hold, a store that has declared the
queue and not yet published, or a state lost with a broker restart
(``result_persistent=False``): it is read again, up to ``attempts`` times, each a
broker round trip.  A stored state is reported PENDING only if every one of those
reads falls inside another reader's hold.
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Optional

from amqp import spec
from amqp.exceptions import NotFound

from .channel import NACK_ALL, basic_get, revived, send_together
from .topology import EXPIRES_AT

#: Pause before the second read of a queue found empty; doubled after each read
#: up to LONGEST_PAUSE.  The pauses only keep a reader from hammering the queue:
#: the bound on re-reads is their number, not the time they take.
FIRST_PAUSE = 0.0002
LONGEST_PAUSE = 0.01

def get_and_requeue(channel: Any, queue_name: str) -> Optional[Any]:
    """``basic.get`` on ``queue_name`` with the requeue sent in the same write.

    The requeue is ``basic.nack(delivery_tag=0, multiple, requeue)``: every message
    the channel holds goes back, and with none (``get-empty``) it is a no-op.  The
    channel must hold no other unacknowledged message.  Raises NotFound (channel
    closed by the broker) if the queue does not exist.
    """
    send_together(channel, basic_get(queue_name), NACK_ALL)
    return received_get(channel)


def received_get(channel: Any) -> Optional[Any]:
    """The answer to a ``basic.get`` sent on ``channel``: the message, or None if empty."""
    reply = channel.wait([spec.Basic.GetOk, spec.Basic.GetEmpty], returns_tuple=True)
    if not reply or len(reply) < 6:
        return None  # get-empty
    delivery_tag, redelivered, exchange, routing_key, message_count, message = reply
    message.channel = channel
    message.delivery_info = {
        "delivery_tag": delivery_tag, "redelivered": redelivered, "exchange": exchange,
        "routing_key": routing_key, "message_count": message_count,
    }
    return message


def peek(channel: Any, queue_name: str, attempts: int) -> Optional[Any]:
    """Return the newest message of ``queue_name`` (left in the queue), or None if none.

    A missing queue answers None at once; one that exists with nothing ready is read
    up to ``attempts`` times in all (see the module docstring).
    """
    pause = FIRST_PAUSE
    for attempt in range(max(attempts, 1)):
        if attempt:
            time.sleep(pause)
            pause = min(pause * 2, LONGEST_PAUSE)
        try:
            message = get_and_requeue(channel, queue_name)
        except NotFound:
            revived(channel)
            return None
        if message is not None:
            return message
    return None


def expired(message: Any, now: Optional[float] = None) -> bool:
    """True if ``message`` carries an ``expires-at`` header that has passed."""
    return headers_expired(message.properties.get("application_headers"), now)


def headers_expired(headers: Optional[Mapping[str, Any]], now: Optional[float] = None) -> bool:
    """True if a state's ``headers`` hold an ``expires-at`` that has passed.

    The one rule for every reader (py-amqp's ``application_headers``, aio-pika's
    ``headers``): ``expires-at`` is milliseconds since the epoch; none, or not a
    whole number, never expires.
    """
    expires_at = (headers or {}).get(EXPIRES_AT)
    if not isinstance(expires_at, int) or isinstance(expires_at, bool):
        return False
    return expires_at <= (time.time() if now is None else now) * 1000
