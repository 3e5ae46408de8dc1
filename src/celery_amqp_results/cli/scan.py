"""Reading many result queues in a row, each once, for ``purge``.

The backend's own read re-reads a queue that looks empty up to
``amqp_results_peek_attempts`` times, in case another reader holds its message
that instant.  A scan cannot afford that for every expired result, and needs no
such care: a queue that looks empty is kept, never deleted.
"""
from __future__ import annotations

from types import TracebackType
from typing import Any, Dict, Optional, Type

from ..backend import AMQPBackend
from ..codec import decode_state
from ..connection import broker_error, failures, make_connection
from ..read import peek


class Scanner:
    """Peeks result queues on a connection of its own (a ``with`` block)."""

    def __init__(self, backend: AMQPBackend) -> None:
        self.backend = backend
        self.connection = make_connection(backend.app, backend.url, None,
                                          backend.settings.ssl)

    def __enter__(self) -> Scanner:
        try:
            self.connection.ensure_connection(max_retries=1)
        except failures(self.connection) as exc:
            raise broker_error(self.connection, exc) from exc
        return self

    def __exit__(self, kind: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.connection.release()

    def state(self, queue_name: str, result_id: str) -> Optional[Dict[str, Any]]:
        """The decoded state in ``queue_name`` (left there), or None if it looks empty.

        Raises InvalidResultError for a state that cannot be decoded.  Exceptions are
        not rebuilt: a scan needs ``status`` and ``date_done``, nothing more.
        """
        message: Any = peek(self.connection.default_channel, queue_name, 1)
        if message is None:
            return None
        return decode_state(result_id, queue_name, message.body,
                            message.properties.get("content_type"),
                            message.properties.get("content_encoding"),
                            self.backend.accept)
