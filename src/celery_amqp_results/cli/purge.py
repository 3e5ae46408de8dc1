"""``purge --older-than AGE``: delete results whose task finished longer ago than AGE.

AMQP cannot list queues, so the result queues are listed through the management
API; each one's ``date_done`` is then read by peeking, as any reader does.  Only
queues named ``<prefix>task.<id>`` or ``<prefix>group.<id>`` are ever deleted,
and only when their stored ``date_done`` is older than the cutoff: a result
that is unfinished, unreadable, empty or young is kept.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, List, Optional

import click
from celery.utils.time import maybe_make_aware

from ..backend import AMQPBackend
from ..errors import InvalidResultError
from .context import backend_from, management_for, reports_errors
from .duration import Duration, format_duration
from .inventory import classify, id_of
from .scan import Scanner

#: Why a result queue is kept, or that it is (to be) deleted.
DELETE = "delete"
YOUNGER = "younger"
UNFINISHED = "unfinished"
EMPTY = "empty"
UNREADABLE = "unreadable"


def finished_at(meta: Dict[str, Any]) -> Optional[datetime]:
    """The stored ``date_done`` as an aware datetime; None if the task is not finished.

    Celery stores it as an ISO string with its offset; a naive one is taken as UTC.
    """
    value = meta.get("date_done")
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return maybe_make_aware(value, timezone.utc)


@dataclass
class Verdict:
    """What purge decided about one result queue, and why."""

    queue: str
    kind: str  # "task" or "group"
    result_id: str
    reason: str
    date_done: Optional[datetime] = None


def judge(scanner: Scanner, kind: str, queue_name: str, result_id: str,
          cutoff: datetime) -> Verdict:
    """Read one result queue's ``date_done`` and decide: delete only if before ``cutoff``."""
    verdict = Verdict(queue_name, kind, result_id, EMPTY)
    try:
        meta = scanner.state(queue_name, result_id)
    except InvalidResultError:
        verdict.reason = UNREADABLE
        return verdict
    if meta is None:
        return verdict  # expired, or another reader holds it this instant: kept either way
    verdict.date_done = finished_at(meta)
    if verdict.date_done is None:
        verdict.reason = UNFINISHED
    elif verdict.date_done < cutoff:
        verdict.reason = DELETE
    else:
        verdict.reason = YOUNGER
    return verdict


def report(verdicts: List[Verdict], age: timedelta, dry_run: bool, prefix: str) -> str:
    """One paragraph: how many were examined, deleted and kept, and why kept."""
    counts = Counter(verdict.reason for verdict in verdicts)
    kinds = Counter(verdict.kind for verdict in verdicts)
    deleted = counts[DELETE]
    verb = "would delete" if dry_run else "deleted"
    kept = len(verdicts) - deleted
    reasons = [f"{counts[reason]} {label}" for reason, label in (
        (YOUNGER, f"finished within {format_duration(age)}"),
        (UNFINISHED, "unfinished (no date_done)"),
        (EMPTY, "empty (state expired, or being read that instant)"),
        (UNREADABLE, "unreadable (see peek)")) if counts[reason]]
    return (f"{len(verdicts)} result queues under {prefix!r} ({kinds['task']} task, "
            f"{kinds['group']} group): {verb} {deleted} finished more than "
            f"{format_duration(age)} ago; kept {kept}"
            + (f": {', '.join(reasons)}" if reasons else ""))


@click.command()
@click.option("--older-than", "age", type=Duration(), required=True,
              help="Delete results whose task finished longer ago than this: 90s, 30m, "
                   "2h, 7d, 1w, or combined such as 1h30m.")
@click.option("--dry-run", is_flag=True, help="Only say what would be deleted.")
@click.option("-v", "--verbose", is_flag=True, help="Name each result deleted.")
@click.pass_context
@reports_errors
def purge(ctx: click.Context, age: timedelta, dry_run: bool, verbose: bool) -> None:
    """Delete stored results (and saved groups) that finished more than AGE ago.

    Needs RabbitMQ's management API to list the result queues.  Unfinished,
    empty, unreadable and younger results are kept, and so is every queue that
    is not a result queue (waiters, chord bookkeeping, other applications').
    """
    backend = backend_from(ctx)
    names = backend.names
    api = management_for(backend)
    cutoff = datetime.now(timezone.utc) - age
    inventory = classify(names, api.queues(names.prefix, ["name"]))
    verdicts: List[Verdict] = []
    with Scanner(backend) as scanner:
        for kind, queues in (("task", inventory.tasks), ("group", inventory.groups)):
            for queue in queues:
                verdict = judge(scanner, kind, queue["name"], id_of(names, queue["name"]),
                                cutoff)
                verdicts.append(verdict)
                if verdict.reason == DELETE:
                    delete(backend, verdict, dry_run, verbose)
    click.echo(report(verdicts, age, dry_run, names.prefix))


def delete(backend: AMQPBackend, verdict: Verdict, dry_run: bool, verbose: bool) -> None:
    """Forget one result (or delete one saved group) that ``judge`` found old enough."""
    if not dry_run:
        if verdict.kind == "group":
            backend.delete_group(verdict.result_id)
        else:
            backend.forget(verdict.result_id)
    if verbose:
        assert verdict.date_done is not None
        click.echo(f"{'would delete' if dry_run else 'deleted'} {verdict.kind} "
                   f"{verdict.result_id} (finished {verdict.date_done.isoformat()})")

