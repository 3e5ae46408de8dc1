"""Quorum result queues: store a new state while holding the old one, so it cannot come back.

A reader peeks a result with ``basic.get`` and puts the message straight back.
On a classic queue a state stored meanwhile wins: the returned older message is
the one ``x-overflow=drop-head`` drops.  On a quorum queue (RabbitMQ 3.10.8,
``benchmarks/cluster_facts.py``), in a queue without ``x-delivery-limit``, the
returned message is exempt and the *newer* one is dropped, so a task polled while it
finishes can keep its ``STARTED`` state for good: 84 of 100 tasks polled by 3 readers
lost their ``SUCCESS``.  With a delivery limit (ours declare one) 3.10.8 keeps the
newer message, and RabbitMQ 4.0.5 always does, as a classic queue does
(tests/test_cluster.py checks all three); none of that is documented behaviour, so
every store into a quorum queue still replaces.

So a state that replaces another in a quorum queue is stored by taking the old
message first (``basic.get``; a consumer while a reader holds it), publishing the
new one (confirmed), and only then acknowledging the old one away.  While the
storing process holds the old message no reader has it, so no reader can put
it back over the new one; and two processes storing states of one task take
turns the same way, the last to store winning, as on a classic queue.
"""
from __future__ import annotations

import logging
import socket
import time
from typing import Any, Callable, List, Optional

from amqp.exceptions import NotFound

from .channel import nack_requeue, revived

logger = logging.getLogger(__name__)


def replace(channel: Any, queue_name: str, publish: Callable[[], bool], grace: float) -> bool:
    """Store a state in ``queue_name`` through ``publish()``, dropping the one it holds.

    ``publish`` publishes the new state to the queue, mandatory and confirmed,
    and answers False if the broker returned it (no such queue); its answer is
    returned.  The old message is taken with one ``basic.get``; if a reader
    holds it just then, by a consumer, which RabbitMQ hands it to the moment it
    is put back (readers polling in a loop would starve repeated gets).  If
    nothing comes within ``grace`` seconds, or the queue is gone, the state is
    published without taking anything: the queue is empty (its state expired).
    """
    try:
        old = channel.basic_get(queue=queue_name, no_ack=False)
        if old is None:
            old = _take(channel, queue_name, grace)
    except NotFound:
        # Deleted since it was declared (forgotten).  py-amqp has reopened the
        # channel; the mandatory publish is returned and the caller declares the
        # queue again.
        revived(channel)
        return publish()
    if old is None:
        logger.debug("queue %s stayed empty for %.3f s: storing without replacing",
                     queue_name, grace)
        return publish()
    tag = old.delivery_info["delivery_tag"]
    try:
        stored = publish()
    except BaseException:
        # Not stored: give the old state back now (if the connection is what
        # failed, the broker does so itself).
        try:
            nack_requeue(channel, tag)
        except Exception:  # pragma: no cover - the channel is gone
            pass
        raise
    # Acknowledged only now: readers find the queue empty only until the new state
    # is in it, never without any state for longer.
    channel.basic_ack(tag)
    return stored


def _take(channel: Any, queue_name: str, grace: float) -> Optional[Any]:
    """The queue's message, held, by a consumer with prefetch 1; None after ``grace`` s."""
    got: List[Any] = []
    channel.basic_qos(0, 1, False)
    consumer_tag = channel.basic_consume(queue=queue_name, no_ack=False, callback=got.append)
    try:
        deadline = time.monotonic() + grace
        while not got:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                channel.connection.drain_events(timeout=left)
            except socket.timeout:
                break
    finally:
        # A delivery sent before the cancel reaches us before its answer: ``got``
        # is complete once basic_cancel returns.  Prefetch 1: at most one.
        channel.basic_cancel(consumer_tag)
    return got[0] if got else None
