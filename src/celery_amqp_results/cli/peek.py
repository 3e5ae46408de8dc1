"""``peek ID...``: show stored results without changing them."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import click
from celery import states

from ..backend import AMQPBackend
from .context import backend_from, reports_errors
from .render import Record, record, to_json, to_text


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
            return "group", dict(saved, status=states.SUCCESS,
                                 result=member_ids(saved["result"]))
    return "task", meta


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
    its member ids.  Reading never removes a result.
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
