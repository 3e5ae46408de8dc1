"""``watch ID|GROUP_ID...``: wait for tasks with a live progress display, then summarize.

Waiting uses the backend's pushed join (``get_many``): the broker wakes the
watcher when a state arrives, nothing polls.  Exit codes: 0 all succeeded,
1 one or more failed (or were revoked), 2 an id is unknown, 3 ``--timeout``
passed with tasks unfinished, 130 interrupted.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import click
from celery import states
from celery.exceptions import TimeoutError as CeleryTimeoutError

from ..backend import AMQPBackend
from .context import EX_INTERRUPTED, backend_from, patient, reports_errors
from .display import make_display
from .peek import member_ids
from .tally import Tally, seconds

#: How many failed or unfinished ids the summary lists before "and N more".
LIST_AT_MOST = 20

EXIT_FAILED = 1
EXIT_UNFINISHED = 3
EXIT_INTERRUPTED = EX_INTERRUPTED


def resolve(backend: AMQPBackend, ids: Tuple[str, ...], allow_pending: bool) -> List[str]:
    """The task ids to watch: a saved group's members in its place, each id once.

    An id that is neither a saved group nor a task with a stored state is refused
    unless ``allow_pending``: it may be a typo, and waiting for it would not end.
    """
    members: List[str] = []
    for given in ids:
        backend.names.task_queue(given)  # an unusable id fails here, with its reason
        saved = backend.restore_group(given, cache=False)
        if saved is not None:
            members.extend(member_ids(saved))
            continue
        if not allow_pending and \
                backend.get_task_meta(given, cache=False)["status"] == states.PENDING:
            raise click.UsageError(
                f"{given}: no saved group and no stored state has this id (a group is "
                f"found only once GroupResult.save() stored it); if it is a task that "
                f"has not started yet, pass --allow-pending to wait for it")
        members.append(given)
    return list(dict.fromkeys(members))


def failure_text(meta: Dict[str, Any]) -> str:
    """``Type: message`` of a failed task's exception, or its state if there is none."""
    result = meta.get("result")
    if isinstance(result, BaseException):
        return f"{type(result).__name__}: {result}"
    return meta.get("status", "?")


def summary(tally: Tally, outcome: str, timeout: Optional[float]) -> List[str]:
    """The closing lines: counts, rate, then the failed and unfinished ids."""
    rate = tally.rate
    noun = "task" if tally.total == 1 else "tasks"
    lines = [f"{tally.total} {noun} watched for {seconds(tally.elapsed)}: "
             f"{tally.succeeded} succeeded, {tally.failed} failed, {tally.pending} pending"
             + ("" if rate is None else f" ({rate:.1f} finished/s while watching)")]
    if outcome == "timeout":
        lines.append(f"stopped: --timeout {timeout:g}s passed with {tally.pending} unfinished")
    elif outcome == "interrupted":
        lines.append(f"interrupted with {tally.pending} unfinished")
    failed = tally.failures()
    if failed:
        lines.append(f"failed ({len(failed)}):")
        lines += [f"  {task_id}  {failure_text(tally.finished[task_id])}"
                  for task_id in failed[:LIST_AT_MOST]]
        if len(failed) > LIST_AT_MOST:
            lines.append(f"  ... and {len(failed) - LIST_AT_MOST} more")
    unfinished = tally.unfinished()
    if unfinished and outcome != "done":
        lines.append(f"unfinished ({len(unfinished)}):")
        lines += [f"  {task_id}" for task_id in unfinished[:LIST_AT_MOST]]
        if len(unfinished) > LIST_AT_MOST:
            lines.append(f"  ... and {len(unfinished) - LIST_AT_MOST} more")
    return lines


def exit_code(tally: Tally) -> int:
    """0 all succeeded, 1 any failed, 3 some unfinished (and none failed)."""
    if tally.failed:
        return EXIT_FAILED
    if tally.pending:
        return EXIT_UNFINISHED
    return 0


@click.command()
@click.argument("ids", nargs=-1, required=True, metavar="ID|GROUP_ID...")
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Stop waiting after this many seconds (exit 3 if tasks are unfinished).")
@click.option("--allow-pending", is_flag=True,
              help="Accept an id with no stored state and no saved group as a task that "
                   "has not started yet.")
@click.option("--plain", is_flag=True,
              help="Plain progress lines even on a terminal (they are the default elsewhere).")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between plain progress lines.")
@click.pass_context
@reports_errors
def watch(ctx: click.Context, ids: Tuple[str, ...], timeout: Optional[float],
          allow_pending: bool, plain: bool, interval: float) -> None:
    """Wait for tasks, or the members of saved groups, showing progress.

    Each ID is a saved group (GroupResult.save()) or a task id.  Shows finished,
    failed and pending counts with rate and ETA, ends with a summary, and exits
    non-zero if any task failed.
    """
    backend = backend_from(ctx)
    task_ids = resolve(backend, ids, allow_pending)
    tally = Tally(task_ids)
    # What is finished already counts at once, not as a burst of "rate".
    for task_id, meta in backend.get_many(task_ids, max_iterations=1):
        tally.add(task_id, meta)
    tally.begin()
    patient(backend)  # the broker answered; a long wait may ride out its restart
    display = make_display(tally, plain, interval)
    display.start()
    outcome = "done"
    try:
        if tally.pending:
            for task_id, meta in backend.get_many(tally.unfinished(), timeout=timeout,
                                                  on_interval=display.tick):
                if tally.add(task_id, meta):
                    display.update()
    except CeleryTimeoutError:
        outcome = "timeout"
    except KeyboardInterrupt:
        outcome = "interrupted"
    finally:
        display.stop()
    for line in summary(tally, outcome, timeout):
        click.echo(line)
    ctx.exit(EXIT_INTERRUPTED if outcome == "interrupted" else exit_code(tally))
