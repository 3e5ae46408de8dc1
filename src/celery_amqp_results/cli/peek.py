"""``peek ID...``: show stored results without changing them."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import click
from celery import states

from ..backend import AMQPBackend
from .context import backend_from, reports_errors
from .render import Record, record, to_json, to_text
from .tally import Tally


def member_ids(group: Any) -> List[str]:
    """The task ids of a restored GroupResult, nested groups flattened, in order."""
    ids: List[str] = []
    for child in getattr(group, "results", None) or []:
        if getattr(child, "results", None) is not None:
            ids.extend(member_ids(child))
        else:
            ids.append(child.id)
    return ids


def read(backend: AMQPBackend, task_id: str) -> Tuple[str, Dict[str, Any]]:
    """``("task", meta)``, or ``("group", meta)`` when only a saved group has this id.

    Only reads (``basic.get`` then requeue): nothing is removed or rewritten.
    """
    meta = backend.get_task_meta(task_id, cache=False)
    if meta["status"] == states.PENDING:
        saved = backend.get_group_meta(task_id, cache=False)
        if saved is not None:
            return "group", group_meta(backend, saved)
    return "task", meta


def group_meta(backend: AMQPBackend, saved: Dict[str, Any]) -> Dict[str, Any]:
    """A saved group as its members stand now, not as its record's own state.

    The record is stored SUCCESS when the group is saved, while its tasks may still
    run: the state shown is the members' (PENDING while any is unfinished, FAILURE
    once all finished and one failed, else SUCCESS), with the counts.
    """
    ids = member_ids(saved["result"])
    tally = Tally(ids)
    for member, member_meta in backend.get_many(ids, max_iterations=1):
        tally.add(member, member_meta)
    if tally.pending:
        state = states.PENDING
    else:
        state = states.FAILURE if tally.failed else states.SUCCESS
    counts = {"total": tally.total, "finished": tally.done, "succeeded": tally.succeeded,
              "failed": tally.failed, "pending": tally.pending}
    return dict(saved, status=state, result=ids, members=counts, stored=True)


@click.command()
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON array, one object per id, for scripts.")
@click.pass_context
@reports_errors
def peek(ctx: click.Context, ids: Tuple[str, ...], as_json: bool) -> None:
    """Show the stored state of each task ID without changing it.

    Prints state, result, traceback, date_done and, with result_extended, name,
    args, kwargs, worker, retries and queue.  An id that names a saved group shows
    how many of its members finished, succeeded, failed and are pending, and their
    ids.  Reading never removes a result.
    """
    backend = backend_from(ctx)
    records: List[Record] = []
    for task_id in ids:
        kind, meta = read(backend, task_id)
        records.append(record(task_id, meta, kind))
    if as_json:
        click.echo(to_json(records))
    else:
        click.echo("\n\n".join(to_text(rec) for rec in records))
