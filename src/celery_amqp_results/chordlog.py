"""The broker side of native chords: a log of finished parts, read by one process at a time.

Each chord has two queues (topology.py): a log, ``<prefix>chord.<group id>``, to
which every finished header task appends one message, and a newest-only queue,
``<prefix>chord-size.<group id>``, holding how many parts the chord waits for.

A part appends its entry (confirmed), then asks the broker how many messages
the log holds (a ``basic.get``, which renews the log's expiry, with its requeue
in the same write).  Only when that count could mean
"complete" does it read the whole log, and it reads it under an *exclusive*
consumer: RabbitMQ refuses a second exclusive consumer on the same queue, so
at most one process looks at the log at a time, and the one that finds it
complete fires the chord's body and deletes both queues while it still holds
the log.  A process that cannot take the log gives up; the holder, after
putting the messages back, counts them again and reads again if some arrived
meanwhile, so the last part is never missed.  Every part costs O(1) broker
operations; only the final read is O(N).
"""
from __future__ import annotations

import logging
import socket
import time
from typing import Any, Dict, List, Optional, Tuple

from amqp.exceptions import AccessRefused, NotFound
from kombu.serialization import dumps, loads
from kombu.utils.functional import LRUCache

from .channel import revived
from .naming import Names
from .read import get_and_requeue, peek
from .store import Store
from .topology import Topology

logger = logging.getLogger(__name__)

#: Longest time, in seconds, a holder waits for the messages the log held when it
#: took it.  They are all ready in the queue, so this only bounds a broken broker.
COLLECT_TIMEOUT = 10.0

#: How many chords' sizes a process remembers (a size never changes).
SIZE_CACHE = 1000

#: Content type of the bookkeeping messages this module writes itself.
_JSON = "json"
_JSON_TYPES = frozenset({"application/json"})


class Holding:
    """The log of one chord, taken exclusively: its messages are held by this process."""

    def __init__(self, log: ChordLog, group_id: str, conn: Any, channel: Any,
                 messages: List[Any]) -> None:
        self._log = log
        self.group_id = group_id
        self._conn = conn
        self._channel = channel
        #: Every message the log held when it was taken, oldest first.
        self.messages = messages

    def release(self) -> int:
        """Put the messages back and return how many the log holds now (0 if it is gone).

        Closing the channel cancels the exclusive consumer and requeues every
        message it held, including any still in flight to us; RabbitMQ has
        requeued them by the time it confirms the close, so the count that
        follows sees them all.
        """
        self._close()
        name = self._log.names.chord_queue(self.group_id)

        def count(channel: Any) -> int:
            try:
                return int(channel.queue_declare(queue=name, passive=True)[1])
            except NotFound:
                revived(channel)
                return 0

        return self._log.store.run(count)

    def finish(self) -> None:
        """Delete the chord's queues: its body has been sent, later parts are duplicates."""
        try:
            self._log.remove(self.group_id, channel=self._channel)
        finally:
            self._close()

    def _close(self) -> None:
        try:
            self._channel.close()
        except Exception:  # the connection may be gone: the broker requeues anyway
            logger.debug("closing chord log channel failed", exc_info=True)
        self._conn.release()


class ChordLog:
    """Create, append to, count, take and delete the queues of native chords."""

    def __init__(self, store: Store, topology: Topology, names: Names,
                 peek_attempts: int) -> None:
        self.store = store
        self.topology = topology
        self.names = names
        self.peek_attempts = peek_attempts
        self._sizes: LRUCache = LRUCache(limit=SIZE_CACHE)

    # -- writing ----------------------------------------------------------------------

    def open(self, group_id: str, entry: bytes, content_type: str,
             content_encoding: str) -> None:
        """Create the chord's queues, empty, with ``entry`` first in the log.

        A frozen chord applied again reuses its group id; the purge makes it a new
        run.  The size is stored as unknown so the size queue is never empty.
        """
        log = self.topology.chord_log_queue(self.names.chord_queue(group_id))

        def operation(channel: Any) -> None:
            log.queue_declare(channel=channel)
            channel.queue_purge(queue=log.name)

        self.store.run(operation)
        self.store.put_in(log, group_id, "CHORD", entry, content_type, content_encoding,
                          create=True)
        self._write_size(group_id, None, 0)

    def set_size(self, group_id: str, size: int) -> None:
        """Record how many parts the chord waits for (before its last task is sent)."""
        self._write_size(group_id, size, 0)

    def note_adds(self, group_id: str, size: int, adds: int) -> None:
        """Record a lower bound of the parts added to the chord, so fewer parts read the log."""
        self._write_size(group_id, size, adds)

    def append(self, group_id: str, task_id: str, entry: bytes, content_type: str,
               content_encoding: str) -> Optional[int]:
        """Append ``entry`` to the log; return how many messages it holds, None if it is gone.

        The count comes from a ``basic.get`` (the broker says how many messages
        remain behind the one it hands out): unlike a passive declare, a get
        renews the log's ``x-expires``, so a chord lives ``result_chord_expires``
        after its last part, and unlike an active declare it cannot bring back a
        log deleted once the body was sent.  The requeue of what the get took
        leaves in the same write (read.get_and_requeue), so the get holds the
        log's head only while the broker reads the next frame.  That matters: a
        part counting while another part holds the head sees one message fewer,
        and when the requeue waited for this process to run again, a part that
        lost the CPU right after its get held the head while the last part
        appended and counted, so both came up one short and the chord never
        fired.  (A passive declare after the requeue is no cure: RabbitMQ answers
        the count ahead of the requeue queued before it, measured on 3.10.8, so
        every part would count its own held message out.)
        """
        log = self.topology.chord_log_queue(self.names.chord_queue(group_id))
        if not self.store.put_in(log, task_id, "CHORD", entry, content_type,
                                 content_encoding, create=False):
            return None

        def count(channel: Any) -> Optional[int]:
            try:
                head = get_and_requeue(channel, log.name)
            except NotFound:  # deleted since: the chord fired or was forgotten
                revived(channel)
                return None
            if head is None:
                return 0  # another process holds the whole log; it counts again after
            return int(head.delivery_info.get("message_count") or 0) + 1

        return self.store.run(count)

    def remove(self, group_id: str, channel: Any) -> None:
        """Delete both queues of the chord, on the holder's ``channel``.

        The deletes are sent without waiting for the broker's answers: the body
        is out already, and the channel's close, which follows, is answered
        only after them.
        """
        self._sizes.pop(group_id, None)
        for name in (self.names.chord_queue(group_id), self.names.chord_size_queue(group_id)):
            channel.queue_delete(queue=name, nowait=True)

    # -- reading ----------------------------------------------------------------------

    def size(self, group_id: str) -> Optional[Tuple[int, int]]:
        """``(size, known adds)`` of the chord, or None while the size is not set yet."""
        known = self._sizes.get(group_id)
        if known is not None:
            return known
        name = self.names.chord_size_queue(group_id)
        message = self.store.run(lambda channel: peek(channel, name, self.peek_attempts))
        if message is None:
            return None
        record = loads(message.body, message.properties.get("content_type"),
                       message.properties.get("content_encoding"), accept=_JSON_TYPES)
        if not isinstance(record, dict) or record.get("size") is None:
            return None
        value = (int(record["size"]), int(record.get("adds") or 0))
        if value[1] == 0:
            # Adds only grow: cache the size alone, a later read may know more adds.
            self._sizes[group_id] = value
        return value

    def take(self, group_id: str, expected: int) -> Optional[Holding]:
        """Take the log exclusively and receive its messages; None if another process has it.

        ``expected`` is how many messages the log held a moment ago.  Messages
        leave the log only with the log itself, and a previous holder's messages
        are back in it before RabbitMQ lets another exclusive consumer in, so at
        least that many arrive.  A new channel has no prefetch limit: they all do.
        """
        name = self.names.chord_queue(group_id)
        pool_conn = self.store.pool.acquire()
        try:
            pool_conn.ensure_connection(max_retries=0)
            channel = pool_conn.channel()
        except Exception:
            pool_conn.release()
            raise
        messages: List[Any] = []
        cancelled: List[str] = []
        try:
            try:
                channel.basic_consume(queue=name, exclusive=True, callback=messages.append,
                                      on_cancel=cancelled.append)
            except (AccessRefused, NotFound):
                # Another process holds the log (it will count again after it lets
                # go), or the chord has fired and its log is gone.
                channel.close()
                pool_conn.release()
                return None
            deadline = time.monotonic() + COLLECT_TIMEOUT
            while len(messages) < expected and not cancelled and time.monotonic() < deadline:
                try:
                    pool_conn.drain_events(timeout=0.1)
                except socket.timeout:
                    pass
        except Exception:
            try:
                channel.close()
            finally:
                pool_conn.release()
            raise
        return Holding(self, group_id, pool_conn, channel, messages)

    # -- helpers ----------------------------------------------------------------------

    def _write_size(self, group_id: str, size: Optional[int], adds: int) -> None:
        record: Dict[str, Any] = {"group_id": group_id, "size": size, "adds": adds}
        content_type, content_encoding, body = dumps(record, serializer=_JSON)
        queue = self.topology.chord_size_queue(self.names.chord_size_queue(group_id))
        self.store.put_in(queue, group_id, "CHORD", _bytes(body, content_encoding),
                          content_type, content_encoding, create=True)


def _bytes(body: Any, encoding: Optional[str]) -> bytes:
    return body if isinstance(body, bytes) else body.encode(encoding or "utf-8")
