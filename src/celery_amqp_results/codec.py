"""Turning a task state into message bytes and back, with the checks a reader needs."""
from __future__ import annotations

from typing import Any, Collection, Dict, Optional, Tuple

from kombu.exceptions import ContentDisallowed, EncodeError
from kombu.serialization import dumps, loads

from .errors import InvalidResultError

#: Fields every stored state must carry.
REQUIRED_FIELDS = ("status", "result")


def encode_state(meta: Dict[str, Any], serializer: str) -> Tuple[bytes, str, str]:
    """Serialize ``meta`` once, so the same bytes can be published to several places.

    Raises kombu's EncodeError (what Celery's tracer expects) naming task and state.
    """
    try:
        content_type, content_encoding, body = dumps(meta, serializer=serializer)
    except Exception as exc:
        raise EncodeError(
            f"the {meta.get('status')} state of task {meta.get('task_id')!r} cannot be "
            f"serialized with result_serializer {serializer!r}: {exc}") from exc
    if isinstance(body, str):
        body = body.encode(content_encoding or "utf-8")
    return body, content_type, content_encoding


def decode_state(task_id: str, queue: str, body: bytes, content_type: Optional[str],
                 content_encoding: Optional[str],
                 accept: Optional[Collection[str]]) -> Dict[str, Any]:
    """Decode a stored state for ``task_id``, or raise InvalidResultError saying why.

    The caller has already put the message back in its queue: a bad message is
    reported, never destroyed.
    """
    where = f"; the message stays in queue {queue!r}" if queue else ""
    try:
        payload = loads(body, content_type, content_encoding, accept=accept)
    except ContentDisallowed as exc:
        allowed = ", ".join(sorted(accept or ())) or "nothing"
        raise InvalidResultError(
            f"result of task {task_id!r} has content type {content_type!r}, which "
            f"result_accept_content does not allow (allowed: {allowed}){where}",
            task_id=task_id, queue=queue, cause=exc) from exc
    except Exception as exc:
        raise InvalidResultError(
            f"result of task {task_id!r} cannot be decoded as {content_type!r}: "
            f"{type(exc).__name__}: {exc}{where}",
            task_id=task_id, queue=queue, cause=exc) from exc
    if not isinstance(payload, dict):
        raise InvalidResultError(
            f"result of task {task_id!r} is a {type(payload).__name__}, not a mapping "
            f"with status and result{where}", task_id=task_id, queue=queue)
    missing = [field for field in REQUIRED_FIELDS if field not in payload]
    if missing:
        raise InvalidResultError(
            f"result of task {task_id!r} lacks the field(s) {', '.join(missing)}{where}",
            task_id=task_id, queue=queue)
    status = payload["status"]
    if not isinstance(status, str) or not status:
        raise InvalidResultError(
            f"result of task {task_id!r} has an invalid status {status!r}{where}",
            task_id=task_id, queue=queue)
    stored_id = payload.get("task_id", task_id)
    if stored_id != task_id:
        raise InvalidResultError(
            f"result read for task {task_id!r} belongs to task {stored_id!r}{where}",
            task_id=task_id, queue=queue)
    payload["task_id"] = task_id
    return payload
