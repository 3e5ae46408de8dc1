"""Names on the broker: validated task ids, result queue names and routing keys."""
from __future__ import annotations

import re
from typing import Any, Optional

from .errors import InvalidTaskIdError

#: AMQP 0-9-1 short strings (queue names, routing keys) hold at most 255 bytes.
SHORTSTR_MAX = 255

#: A ``reply_to`` as Celery sets it (an app's thread oid, a UUID): the only kind a
#: store announces to directly, so a task message cannot aim states at any queue.
REPLY_TO = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def validate_id(value: Any, prefix: str, kind: str = "task id") -> str:
    """Return ``value`` if it can name a result queue under ``prefix``, else raise.

    Checked up front so a bad id fails with a sentence naming it, instead of a
    broker error (or a channel closed) somewhere down the line.
    """
    if not isinstance(value, str):
        raise InvalidTaskIdError(
            f"{kind} must be a string, got {type(value).__name__}: {value!r}")
    if not value:
        raise InvalidTaskIdError(f"{kind} must not be empty")
    size = len((prefix + value).encode("utf-8"))
    if size > SHORTSTR_MAX:
        limit = SHORTSTR_MAX - len(prefix.encode("utf-8"))
        raise InvalidTaskIdError(
            f"{kind} {value[:40]!r}... is too long: {len(value.encode('utf-8'))} bytes, "
            f"at most {limit} fit in a RabbitMQ queue name after the prefix {prefix!r}")
    return value


class Names:
    """Queue names for one queue prefix (``amqp_results_queue_prefix``)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.task_prefix = prefix + "task."
        self.group_prefix = prefix + "group."
        self.waiter_prefix = prefix + "waiter."
        self.chord_prefix = prefix + "chord."
        self.chord_size_prefix = prefix + "chord-size."

    def task_queue(self, task_id: Any) -> str:
        """Name of the queue that stores the newest state of ``task_id``."""
        return self.task_prefix + validate_id(task_id, self.task_prefix)

    def group_queue(self, group_id: Any) -> str:
        """Name of the queue that stores a saved group."""
        return self.group_prefix + validate_id(group_id, self.group_prefix, "group id")

    def chord_queue(self, group_id: Any) -> str:
        """Name of the queue that logs the finished parts of a native chord."""
        # Validated against the longer of the two chord prefixes: a group id
        # accepted for one chord queue must fit the other too.
        return self.chord_prefix + validate_id(group_id, self.chord_size_prefix, "group id")

    def chord_size_queue(self, group_id: Any) -> str:
        """Name of the queue that holds a native chord's size."""
        return self.chord_size_prefix + validate_id(group_id, self.chord_size_prefix, "group id")

    def reply_queue(self, reply_to: Any) -> Optional[str]:
        """The waiter queue of the thread whose tasks carry ``reply_to``; None unless
        ``reply_to`` is a UUID (what Celery sets: ``app.thread_oid``)."""
        if isinstance(reply_to, str) and REPLY_TO.fullmatch(reply_to):
            return f"{self.waiter_prefix}reply-{reply_to}"
        return None

    def routing_key(self, task_id: Any) -> str:
        """Routing key on the notify exchange under which a task's states are announced."""
        return validate_id(task_id, "")
