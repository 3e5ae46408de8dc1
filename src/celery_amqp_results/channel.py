"""Small AMQP channel operations that py-amqp lacks or that need care."""
from __future__ import annotations

import struct
from typing import Any, List, Tuple

from amqp import spec
from amqp.serialization import dumps

_RETURNS = "_amqp_results_returns"

#: AMQP frame type of a method frame, and the frame-end octet.
_METHOD_FRAME = 1
_FRAME_END = b"\xce"

#: A method without content: (class id, method id), argument signature, arguments.
Method = Tuple[Tuple[int, int], str, tuple]

def basic_get(queue_name: str) -> Method:
    """``basic.get`` of ``queue_name``, the message to be acknowledged (or requeued)."""
    return spec.Basic.Get, "Bsb", (0, queue_name, False)


#: ``basic.nack`` of every message the channel holds, requeued; a no-op if none.
NACK_ALL: Method = (spec.Basic.Nack, "Lbb", (0, True, True))


def send_together(channel: Any, *methods: Method) -> None:
    """Write ``methods`` on ``channel`` in one socket write, waiting for no answer.

    py-amqp writes each method on its own; a process descheduled between two
    writes would leave the broker with the first alone for as long (read.py).
    The connection must not be written to by another thread meanwhile: pooled
    and waiter connections are used by one thread at a time.
    """
    frames = []
    for method, argsig, args in methods:
        payload = struct.pack(">HH", *method) + dumps(argsig, args)
        frames.append(struct.pack(">BHI", _METHOD_FRAME, channel.channel_id, len(payload))
                      + payload + _FRAME_END)
    channel.connection.transport.write(b"".join(frames))


def nack_requeue(channel: Any, delivery_tag: int) -> None:
    """Put a peeked message back with ``basic.nack`` (py-amqp only sends reject).

    Quorum queues count ``basic.reject`` requeues towards their delivery limit
    and drop the message after 20 from RabbitMQ 4.0; a nack does not count.
    """
    channel.send_method(spec.Basic.Nack, "Lbb", (delivery_tag, False, True))


def revived(channel: Any) -> None:
    """Note that the broker closed ``channel`` and py-amqp reopened it (a 404, a 406).

    The reopened channel is no longer in confirm mode.  py-amqp 5.4 knows it and
    selects confirms again on the next publish; py-amqp 5.3 (what Celery 5.3 ships
    with) does not, and that publish then waits for a confirm that never comes.
    """
    if hasattr(channel, "_confirm_selected"):
        channel._confirm_selected = False


def returns_of(channel: Any) -> List[str]:
    """The list that collects routing keys of messages the broker returned on ``channel``.

    Without a handler py-amqp raises on ``basic.return`` in the middle of waiting
    for the publish confirm and leaves that confirm unread, so the next publish
    would take it for its own.  With one, the wait ends at the right confirm.
    """
    returned = getattr(channel, _RETURNS, None)
    if returned is None:
        returned = []
        setattr(channel, _RETURNS, returned)

        def on_return(exc: Any, exchange: str, routing_key: str, message: Any) -> None:
            returned.append(routing_key)

        channel.events["basic_return"].add(on_return)
    return returned
