"""Reading the newest state of a task in the Celery 4 topology.

A Celery 4 queue keeps every state a task sent (it has no max-length), so the
newest is the last message.  Reading it means fast-forwarding, as Celery 4.4's
``get_task_meta`` did: ``basic.get`` each message, acknowledge (drop) each state
older than the newest, and put the newest back.  Polls therefore never remove a
result (a Celery 4 client reading after us finds the newest state), but they do
drop the history of intermediate states.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, TypeVar

from amqp.exceptions import NotFound

from ..channel import nack_requeue, revived

T = TypeVar("T")
Meta = Dict[str, Any]
#: Decodes a raw message of a task id found in a queue into its state.
Decoder = Callable[[str, Any, str], Meta]

#: First and longest pause, in seconds, between reads of a queue found empty.
FIRST_PAUSE = 0.0005
LONGEST_PAUSE = 0.005

def newest_state(channel: Any, name: str, task_id: str, decode: Decoder,
                 grace: float) -> Optional[Meta]:
    """The newest state of ``task_id`` in queue ``name`` (left there), or None if none.

    A missing queue answers None at once.  An existing queue with nothing for the
    task is read again for up to ``grace`` seconds: another reader may hold its
    messages for an instant.  (A Celery 4 reader declares the queue of a task it
    polls, so this grace is also what a poll of such a pending task costs.)
    """
    message = within_grace(channel, lambda: _fast_forward(channel, name, task_id), grace)
    return None if message is None else decode(task_id, message, name)


def within_grace(channel: Any, read: Callable[[], Optional[T]], grace: float) -> Optional[T]:
    """``read()`` until it finds something, for up to ``grace`` seconds after the first miss.

    None at once if the queue does not exist (``read`` raised NotFound: the broker
    closed ``channel`` and py-amqp reopened it).  Pauses grow from 0.5 ms to 5 ms.
    In this topology an empty queue is ordinary (a Celery 4 reader declares the
    queue of a task it polls), so the bound is time, ``amqp_results_peek_grace``.
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


def _fast_forward(channel: Any, name: str, task_id: str) -> Optional[Any]:
    """Take the queue's messages; drop the task's older states; requeue the newest.

    Messages of another task (two ids equal without their dashes share a queue)
    are put back untouched.  A state is dropped only once a newer state of the
    same task is held, so the newest survives even when two readers interleave.
    Only the newest is held at a time, so however long the backlog, memory stays
    flat and, unlike Celery 4 (1000 at most), it is read to the end.
    """
    newest: Optional[Any] = None
    foreign: List[int] = []
    try:
        while True:
            message = channel.basic_get(queue=name, no_ack=False)
            if message is None:
                break
            owner = message.properties.get("correlation_id")
            if owner is not None and owner != task_id:
                foreign.append(message.delivery_info["delivery_tag"])
                continue
            if newest is not None:
                channel.basic_ack(newest.delivery_info["delivery_tag"])
            newest = message
    except BaseException:
        # Best effort: on a lost connection the broker requeues them by itself.
        try:
            _requeue(channel, foreign, newest)
        except Exception:
            pass
        raise
    _requeue(channel, foreign, newest)
    return newest


def _requeue(channel: Any, foreign: List[int], newest: Optional[Any]) -> None:
    """Put back every message still held: other tasks' states and the newest."""
    for tag in foreign:
        nack_requeue(channel, tag)
    if newest is not None:
        nack_requeue(channel, newest.delivery_info["delivery_tag"])
