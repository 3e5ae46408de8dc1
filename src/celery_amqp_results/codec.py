"""Turning a task state into message bytes and back, with the checks a reader needs."""
from __future__ import annotations

from typing import Any, Collection, Dict, Optional, Tuple

from kombu import compression as kombu_compression
from kombu.exceptions import ContentDisallowed, EncodeError
from kombu.serialization import dumps, loads

from .errors import InvalidResultError

#: Fields every stored state must carry.
REQUIRED_FIELDS = ("status", "result")

#: Marker in front of a compressed payload, then the compression's content type, a
#: NUL, and the compressed bytes: Celery 5.7's in-band format (``result_compression``),
#: so Celery's own decode reads what this package stores and the other way round.  A
#: serialized state never starts with a NUL byte, so nothing else is taken for one.
COMPRESSED_MAGIC = b"\x00celery-compressed\x00"


def compression_method(conf: Any) -> Optional[str]:
    """``result_compression`` checked against kombu's registry (any Celery version).

    Celery 5.7 checks it too; Celery 5.3 to 5.6 do not know the setting, and this
    package honours it there as well.  An unknown name is a ValueError naming it.
    """
    method = conf.get("result_compression")
    if not method:
        return None
    try:
        kombu_compression.get_encoder(method)
    except KeyError:
        known = ", ".join(sorted(kombu_compression.encoders()))
        raise ValueError(f"result_compression {method!r} is not a compression kombu "
                         f"knows here (known: {known})") from None
    return str(method)


def compress(body: bytes, method: Optional[str]) -> bytes:
    """``body`` compressed with ``method`` in Celery's in-band format; as is for None."""
    if not method:
        return body
    compressed, content_type = kombu_compression.compress(body, method)
    return b"".join([COMPRESSED_MAGIC, content_type.encode("utf-8"), b"\x00", compressed])


def decompress(body: bytes) -> bytes:
    """The payload of a body ``compress`` made, or ``body`` itself if it is not one.

    Driven by the body alone: a reader without ``result_compression`` reads a
    compressed state, and a state stored before compression was on stays readable.
    Raises ValueError naming the compression if this process cannot undo it.
    """
    if isinstance(body, memoryview):
        body = body.tobytes()
    if not isinstance(body, (bytes, bytearray)) or not body.startswith(COMPRESSED_MAGIC):
        return body
    content_type, _, compressed = bytes(body[len(COMPRESSED_MAGIC):]).partition(b"\x00")
    name = content_type.decode("utf-8", "replace")
    try:
        return kombu_compression.decompress(compressed, name)
    except KeyError:
        raise ValueError(f"it is compressed as {name!r}, which kombu here cannot "
                         f"decompress (is its library installed?)") from None


def encode_state(meta: Dict[str, Any], serializer: str,
                 compression: Optional[str] = None) -> Tuple[bytes, str, str]:
    """Serialize ``meta`` once, so the same bytes can be published to several places.

    With ``compression`` (``result_compression``) the bytes are compressed; the content
    type stays the serializer's.  Raises kombu's EncodeError (what Celery's tracer
    expects) naming task and state.
    """
    try:
        content_type, content_encoding, body = dumps(meta, serializer=serializer)
    except Exception as exc:
        raise EncodeError(
            f"the {meta.get('status')} state of task {meta.get('task_id')!r} cannot be "
            f"serialized with result_serializer {serializer!r}: {exc}") from exc
    if isinstance(body, str):
        body = body.encode(content_encoding or "utf-8")
    return compress(body, compression), content_type, content_encoding


def decode_state(task_id: str, queue: str, body: bytes, content_type: Optional[str],
                 content_encoding: Optional[str],
                 accept: Optional[Collection[str]]) -> Dict[str, Any]:
    """Decode a stored state for ``task_id``, or raise InvalidResultError saying why.

    The caller has already put the message back in its queue: a bad message is
    reported, never destroyed.
    """
    where = f"; the message stays in queue {queue!r}" if queue else ""
    try:
        body = decompress(body)
    except Exception as exc:
        raise InvalidResultError(
            f"result of task {task_id!r} cannot be decompressed: {exc}{where}",
            task_id=task_id, queue=queue, cause=exc) from exc
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
