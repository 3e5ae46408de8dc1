"""Native chords: the body is sent once, as soon as the last header task finishes.

Celery's protocol: the client calls ``apply_chord`` before it sends the header
and ``set_chord_size`` before it sends the header's last task; each header task,
once finished, calls ``on_chord_part_return``; a header task may extend the
chord with ``add_to_chord``.  This module keeps Celery's side of it (what a
part records, when a chord is complete, its values in order, its errors, the
body's dispatch) and leaves the broker side to chordlog.py.

Semantics follow Celery's Redis backend: a part counts once per (task id,
header index) even if a redelivered task reports twice; the body gets the
values in header order (``result_backend_transport_options
["result_chord_ordered"]``, default True) or in finishing order; if a header
task failed, the chord fails with ``ChordError("Dependency <id> raised ...")``
once every part has reported, the body's ``link_error`` callbacks run, and the
header results stay readable.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Sequence, Tuple

from celery import maybe_signature, states
from celery.exceptions import ChordError
from celery.result import GroupResult, allow_join_result
from celery.utils.functional import _regen
from kombu.serialization import dumps

from .chordlog import ChordLog
from .codec import compress, decompress

if TYPE_CHECKING:
    from .backend import AMQPBackend

logger = logging.getLogger(__name__)

#: Sorts parts without a header index (old clients) after the others.
_NO_INDEX = float("inf")


@dataclass
class Part:
    """One finished header task as recorded in the chord log."""

    task_id: str
    index: float
    state: str
    result: Any


@dataclass
class Tally:
    """What a complete read of a chord log says."""

    complex_header: bool = False
    #: First record of each (task id, index), in the order they finished.
    parts: Dict[Tuple[str, float], Part] = field(default_factory=dict)
    #: Ids of the tasks added with ``add_to_chord``.
    added: List[str] = field(default_factory=list)

    def complete(self, size: int) -> bool:
        return len(self.parts) >= size + len(set(self.added))


def chord_error(task_id: str, exc: BaseException) -> ChordError:
    """Celery's ChordError for a failed header task, with the failure as its cause."""
    error = ChordError(f"Dependency {task_id} raised {exc!r}")
    error.__cause__ = exc if isinstance(exc, Exception) else None
    return error


class NativeChords:
    """Celery's chord calls, for one backend."""

    def __init__(self, backend: AMQPBackend, log: ChordLog) -> None:
        self.backend = backend
        self.log = log

    @property
    def ordered(self) -> bool:
        options = self.backend.app.conf.get("result_backend_transport_options") or {}
        return bool(options.get("result_chord_ordered", True))

    # -- the client's calls ------------------------------------------------------------

    def apply(self, header_result_args: Sequence[Any]) -> None:
        """Create the chord's log before its header is sent (``apply_chord``).

        A header holding groups is saved as a group too: the body then gets the
        nested structure, read back by joining it, as with the Redis backend.  A
        header given as a generator (Celery's ``_regen``, a list subclass) is not
        looked into: that would produce all of it before its first task is sent,
        where Celery sends as it goes (#3021); Redis does not look either.
        """
        group_id, results = header_result_args[0], header_result_args[1]
        complex_header = (isinstance(results, (list, tuple))
                          and not isinstance(results, _regen)
                          and any(isinstance(result, GroupResult) for result in results))
        if complex_header:
            self.backend.save_group(group_id, self.backend.app.GroupResult(*header_result_args))
        self.log.open(group_id, *self._encode({"kind": "open", "complex": complex_header}))

    def set_size(self, group_id: str, size: int) -> None:
        """Record how many parts the chord waits for (``set_chord_size``)."""
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"chord size of group {group_id!r} must be an int >= 0, "
                             f"got {size!r}")
        self.log.set_size(group_id, size)

    def add(self, group_id: str, task_id: str) -> None:
        """Make the chord wait for one more task (``add_to_chord``)."""
        entry = self._encode({"kind": "add", "task_id": task_id})
        if self.log.append(group_id, task_id, *entry) is None:
            raise ChordError(
                f"cannot add task {task_id!r} to chord {group_id!r}: the chord has "
                f"already finished, expired or was never applied with this backend")

    # -- the worker's call -------------------------------------------------------------

    def part_returned(self, request: Any, state: str, result: Any) -> None:
        """Record one finished header task; send the body if it was the last one."""
        group_id, task_id = getattr(request, "group", None), getattr(request, "id", None)
        if not group_id or not task_id:
            return
        backend = self.backend
        callback = maybe_signature(request.chord, app=backend.app)
        index = getattr(request, "group_index", None)
        entry = self._encode({
            "kind": "part", "task_id": task_id, "index": index, "state": state,
            "result": backend.encode_result(result, state)})
        try:
            count = self.log.append(group_id, task_id, *entry)
            if count is None:
                logger.warning(
                    "Chord %r: header task %r reported after the chord's body was sent "
                    "(a redelivered task), or after the chord expired or was forgotten; "
                    "nothing more to do", group_id, task_id)
                return
            self._maybe_fire(group_id, count, callback)
        except Exception as exc:
            # The body was not sent (_fire reports its own errors): fail the chord
            # with the cause rather than leave its result pending for ever.
            logger.exception("Chord %r: the part of header task %r could not be counted",
                             group_id, task_id)
            backend.chord_error_from_stack(callback, ChordError(
                f"chord {group_id}: the result of header task {task_id} could not be "
                f"counted: {exc!r}"))

    def _maybe_fire(self, group_id: str, count: int, callback: Any) -> None:
        known = self.log.size(group_id)
        if known is None:
            return  # the size is set before the last task is sent: that one will see it
        size, known_adds = known
        # The log holds the opening entry, then parts and adds: fewer messages
        # than this cannot be a complete chord, so there is nothing to read.
        if count < 1 + size + 2 * known_adds:
            return
        while True:
            holding = self.log.take(group_id, count)
            if holding is None:
                return  # another process reads the log; it counts again when it lets go
            try:
                tally = self._tally(group_id, holding.messages)
            except BaseException:
                holding.release()
                raise
            if tally.complete(size):
                try:
                    self._fire(group_id, callback, tally)
                finally:
                    try:
                        holding.finish()
                    except Exception:  # the body is out: its queues will expire
                        logger.exception("Chord %r: deleting its queues failed", group_id)
                return
            adds = len(set(tally.added))
            count = holding.release()
            if adds > known_adds:
                self.log.note_adds(group_id, size, adds)
                known_adds = adds
            if count <= len(holding.messages):
                return  # nothing arrived while we held the log: the last part is to come

    # -- reading the log and firing ----------------------------------------------------

    def _tally(self, group_id: str, messages: List[Any]) -> Tally:
        tally = Tally()
        for message in messages:
            try:
                entry = self.backend.decode(decompress(message.body))
                kind = entry["kind"]
            except Exception as exc:
                logger.error("Chord %r: an unreadable message in its log was skipped: %r",
                             group_id, exc)
                continue
            if kind == "open":
                tally.complex_header = bool(entry.get("complex"))
            elif kind == "add":
                tally.added.append(str(entry["task_id"]))
            elif kind == "part":
                index = entry.get("index")
                key = (str(entry["task_id"]), _NO_INDEX if index is None else float(index))
                if key not in tally.parts:
                    tally.parts[key] = Part(key[0], key[1], entry["state"], entry["result"])
        return tally

    def _fire(self, group_id: str, callback: Any, tally: Tally) -> None:
        """Send the body with the header's values, or fail the chord with a ChordError."""
        backend = self.backend
        try:
            values = (self._joined_values(group_id) if tally.complex_header
                      else self._logged_values(tally))
        except ChordError as exc:
            logger.error("Chord %r raised: %r", group_id, exc)
            backend.chord_error_from_stack(callback, exc)
            return
        except Exception as exc:
            logger.exception("Chord %r: reading the header's results failed", group_id)
            backend.chord_error_from_stack(callback, ChordError(f"Join error: {exc!r}"))
            return
        publish = getattr(backend.app.amqp, "_retry_publish", None)
        telemetry = backend.telemetry
        try:
            with telemetry.span("dispatch_chord", "send", group_id,
                                backend.names.chord_queue(group_id), "chord",
                                {"celery.chord.size": len(tally.parts)}):
                if publish is not None:  # Celery 5.5+: retries by task_publish_retry_policy
                    publish(callback.delay, values)
                else:
                    callback.delay(values)
        except Exception as exc:
            logger.exception("Chord %r: sending the body failed", group_id)
            backend.chord_error_from_stack(callback, ChordError(f"Callback error: {exc!r}"))
        else:
            telemetry.count("chord_dispatches")

    def _logged_values(self, tally: Tally) -> List[Any]:
        parts = list(tally.parts.values())
        if self.ordered:
            parts.sort(key=lambda part: part.index)  # stable: ties keep finishing order
        values = []
        for part in parts:
            value = part.result
            if part.state in states.EXCEPTION_STATES:
                try:
                    value = self.backend.exception_to_python(value)
                except Exception as exc:  # e.g. SecurityError: a type Celery won't rebuild
                    raise chord_error(part.task_id, exc) from exc
            if part.state in states.PROPAGATE_STATES:
                raise chord_error(part.task_id, value)
            values.append(value)
        return values

    def _joined_values(self, group_id: str) -> List[Any]:
        header = GroupResult.restore(group_id, backend=self.backend, app=self.backend.app)
        if header is None:
            raise ChordError(f"GroupResult {group_id} no longer exists")
        try:
            with allow_join_result():
                return header.join_native(
                    timeout=self.backend.app.conf.result_chord_join_timeout, propagate=True)
        except Exception as exc:
            culprit = next(header._failed_join_report(), None)
            if culprit is None:
                raise
            raise chord_error(culprit.id, exc) from exc

    def _encode(self, entry: Dict[str, Any]) -> Tuple[bytes, str, str]:
        """A log entry as message bytes, compressed by this package's own rule (codec.py):
        Celery 5.7's encode compresses and older ones do not, and a chord's processes
        may run either."""
        content_type, content_encoding, body = dumps(entry, serializer=self.backend.serializer)
        if isinstance(body, str):
            body = body.encode(content_encoding or "utf-8")
        return compress(body, self.backend.compression), content_type, content_encoding
