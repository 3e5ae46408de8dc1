"""A task's stored state as a plain record: JSON for scripts, aligned lines for people."""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Dict, List, Tuple

from celery import states

#: Fields shown after state and result, in this order, when the state has them
#: (``name`` to ``queue`` exist only with ``result_extended``).
DETAIL_FIELDS = ("date_done", "name", "args", "kwargs", "worker", "retries", "queue",
                 "group_id", "parent_id", "children")

Record = Dict[str, Any]


def describe_exception(exc: BaseException) -> Dict[str, str]:
    """An exception as type, module and message (what a script can compare)."""
    return {"type": type(exc).__name__, "module": type(exc).__module__,
            "message": str(exc)}


def record(task_id: str, meta: Dict[str, Any], kind: str = "task") -> Record:
    """The fields of ``meta`` worth showing, JSON-ready, in a stable order.

    A failure's result is an exception object in ``meta``; it becomes
    ``{"type", "module", "message"}``.  ``stored`` says whether anything was
    found: PENDING is also what an unknown, forgotten or expired id reads as.
    """
    status = meta.get("status", states.PENDING)
    result = meta.get("result")
    if isinstance(result, BaseException):
        result = describe_exception(result)
    out: Record = {"id": task_id, "kind": kind, "state": status,
                   "stored": meta.get("stored", status != states.PENDING),
                   "result": result, "traceback": meta.get("traceback")}
    if "members" in meta:  # a saved group: how its members stand (peek.group_meta)
        out["members"] = meta["members"]
    for name in DETAIL_FIELDS:
        if name in meta:
            value = meta[name]
            out[name] = value.isoformat() if isinstance(value, datetime) else value
    return out


def to_json(records: List[Record]) -> str:
    """Records as a JSON array; values JSON cannot hold are written as their repr."""
    return json.dumps(records, indent=2, default=repr)


def to_text(rec: Record) -> str:
    """One record as aligned ``field  value`` lines under its id, traceback last."""
    lines = [rec["id"]]
    state = rec["state"]
    if not rec["stored"]:
        state += "  (nothing stored: unknown id, not started yet, expired or forgotten)"
    rows: List[Tuple[str, str]] = [("kind", rec["kind"])] if rec["kind"] != "task" else []
    rows += [("state", state)]
    if "members" in rec:
        counts = rec["members"]
        rows.append(("members", f"{counts['total']}: {counts['finished']} finished "
                                f"({counts['succeeded']} succeeded, {counts['failed']} "
                                f"failed), {counts['pending']} pending"))
        rows.append(("ids", " ".join(rec["result"])))
    elif rec["stored"]:
        result = rec["result"]
        if rec["state"] in states.EXCEPTION_STATES and isinstance(result, dict) \
                and "type" in result:
            rows.append(("result", f"{result['type']}: {result.get('message', '')}"))
        else:
            # As JSON even for a string, so "4" and 4 look different.
            rows.append(("result", json.dumps(result, default=repr)))
    rows += [(name, _show(rec[name])) for name in DETAIL_FIELDS
             if rec.get(name) not in (None, [], {})]
    width = max(len(name) for name, _ in rows)
    lines += [f"  {name.ljust(width)}  {value}" for name, value in rows]
    if rec.get("traceback"):
        lines.append("  traceback:")
        lines += ["    " + line for line in str(rec["traceback"]).rstrip().splitlines()]
    return "\n".join(lines)


def _show(value: Any) -> str:
    """A value for a person: a string as it is, the rest as JSON or else repr."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, default=repr)
    except (TypeError, ValueError):
        return repr(value)
