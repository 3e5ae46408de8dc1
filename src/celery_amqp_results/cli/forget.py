"""``forget ID...``: delete stored results for everyone."""
from __future__ import annotations

from typing import Tuple

import click
from celery import states

from ..backend import AMQPBackend
from ..errors import InvalidResultError
from .context import backend_from, reports_errors


def is_stored(backend: AMQPBackend, some_id: str, group: bool) -> bool:
    """True if a result (or saved group) is stored under ``some_id``, readable or not."""
    try:
        if group:
            return backend.restore_group(some_id, cache=False) is not None
        return backend.get_task_meta(some_id, cache=False)["status"] != states.PENDING
    except InvalidResultError:
        return True  # undecodable, but there: forgetting it is how to get rid of it


@click.command()
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@click.option("--group", "groups", is_flag=True,
              help="The ids are saved groups: delete the group records (not their members).")
@click.pass_context
@reports_errors
def forget(ctx: click.Context, ids: Tuple[str, ...], groups: bool) -> None:
    """Delete the stored result of each task ID, as AsyncResult.forget() does.

    The result is gone for every reader at once.  Says for each id whether a
    result was stored; an id with nothing stored is not an error.
    """
    backend = backend_from(ctx)
    forgotten = 0
    for task_id in ids:
        existed = is_stored(backend, task_id, groups)
        if groups:
            backend.delete_group(task_id)
        else:
            backend.forget(task_id)
        forgotten += existed
        what = "group" if groups else "result"
        click.echo(f"{task_id}: {'forgotten' if existed else f'no {what} stored'}")
    noun = "group record" if groups else "result"
    click.echo(f"forgot {forgotten} {noun}{'' if forgotten == 1 else 's'} "
               f"of {len(ids)} id{'' if len(ids) == 1 else 's'}")
