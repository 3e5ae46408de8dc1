"""``doctor``: check the broker and the stored results against this app's settings.

First it connects to the AMQP broker the backend is configured for (exit 69 when
it cannot) and checks that the management API belongs to that broker
(identity.py): another broker's API makes every other finding about that one, so
they are skipped.  Then it reads only: the API's overview, nodes, feature flags,
vhost and the queues under the backend's prefix, and one AMQP read of an id that
does not exist.  Exit code 0 when every finding is ok or info, 1 when any is a
warning or a problem, 69 when the broker or the management API cannot be reached.
"""
from __future__ import annotations

import json
import textwrap
import uuid
from typing import Any, Callable, Dict, List, Optional, TypeVar

import click

from ..backend import AMQPBackend
from ..errors import ResultBrokerError
from ..management import NotFoundError, RefusedError
from .context import (
    COMMAND_RETRY_POLICY,
    backend_from,
    connection_for,
    management_for,
    reports_errors,
)
from .findings import (
    INFO,
    OK,
    PROBLEM,
    Finding,
    check_arguments,
    check_broker,
    check_capacity,
    check_connection,
    check_queue_types,
    check_transient,
    version_tuple,
    worst,
)
from .identity import check_identity, reach
from .inventory import classify

T = TypeVar("T")

#: Width the text report is wrapped to.
WIDTH = 100

#: Queue fields doctor asks the management API for.
QUEUE_COLUMNS = ("name", "arguments", "durable", "auto_delete", "exclusive", "type",
                 "messages", "memory")


def probe(backend: AMQPBackend) -> Optional[str]:
    """Read an id nobody uses, over AMQP; the error text if that fails, else None."""
    try:
        backend.get_task_meta(f"doctor-probe-{uuid.uuid4()}", cache=False)
    except ResultBrokerError as exc:
        return str(exc)
    return None


def optional(fetch: Callable[[], T]) -> Optional[T]:
    """What ``fetch`` returns, or None if the API refuses it to this user or lacks it.

    A user tagged only ``management`` can list queues but not read nodes, feature
    flags or vhost records; doctor then says what it could not check.
    """
    try:
        return fetch()
    except (RefusedError, NotFoundError):
        return None


def examine(backend: AMQPBackend) -> Dict[str, Any]:
    """Ask the broker everything doctor looks at and return the findings and counts.

    ``counts`` is None when the management API is another broker's.
    """
    broker = reach(connection_for(backend), COMMAND_RETRY_POLICY)
    api = management_for(backend)
    overview = api.overview()
    identity = check_identity(broker, overview, api.root, api.user)
    if identity.level == PROBLEM:
        skipped = [identity, check_connection(backend.as_uri(), probe(backend))]
        return {"api": api.root, "vhost": api.vhost, "prefix": backend.names.prefix,
                "findings": [finding.as_dict() for finding in skipped], "counts": None,
                "level": worst(skipped)}
    nodes = optional(api.nodes)
    inventory = classify(backend.names, api.queues(backend.names.prefix, QUEUE_COLUMNS))
    deprecations = (optional(api.deprecated_features_used)
                    if version_tuple(overview.get("rabbitmq_version", "")) >= (3, 13)
                    else None)
    findings: List[Finding] = [
        identity,
        check_broker(overview, nodes, api.user),
        check_connection(backend.as_uri(), probe(backend)),
        check_queue_types(optional(api.feature_flags), optional(api.vhost_info),
                          inventory.results, api.user, backend.topology.queue_type),
        check_transient(inventory, deprecations),
        check_arguments(inventory.results, backend.topology.queue_arguments,
                        backend.topology.queue_type),
        check_capacity(inventory, nodes, backend.topology.expires,
                       bool(overview.get("disable_stats"))),
    ]
    memory = [queue["memory"] for queue in inventory.results
              if isinstance(queue.get("memory"), int)]
    return {
        "api": api.root, "vhost": api.vhost, "prefix": backend.names.prefix,
        "findings": [finding.as_dict() for finding in findings],
        "counts": {
            "task_results": len(inventory.tasks), "groups": len(inventory.groups),
            "waiters": len(inventory.waiters), "other": len(inventory.other),
            "empty_results": sum(1 for queue in inventory.results
                                 if queue.get("messages") == 0),
            "result_memory_bytes": sum(memory) if memory else None,
        },
        "level": worst(findings),
    }


def to_text(report: Dict[str, Any]) -> str:
    """The report for a person: one block per finding, advice indented under it."""
    lines = [f"vhost {report['vhost']!r}, queue prefix {report['prefix']!r}, "
             f"management API {report['api']}", ""]
    width = max(len(finding["topic"]) for finding in report["findings"])
    indent = " " * (8 + 1 + width + 2)
    for finding in report["findings"]:
        head = f"{finding['level']:<8} {finding['topic']:<{width}}  "
        lines += textwrap.wrap(finding["summary"], WIDTH, initial_indent=head,
                               subsequent_indent=indent, break_on_hyphens=False)
        if finding["advice"]:
            lines += textwrap.wrap("advice: " + finding["advice"], WIDTH,
                                   initial_indent=indent, subsequent_indent=indent + "  ",
                                   break_on_hyphens=False)
    levels = [finding["level"] for finding in report["findings"]]
    lines += ["", f"{levels.count('problem')} problem(s), {levels.count('warning')} "
                  f"warning(s), {levels.count(OK) + levels.count(INFO)} fine"]
    return "\n".join(lines)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON, for scripts.")
@click.pass_context
@reports_errors
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check the broker and the result queues against this app's settings.

    Reports the broker version and the features that matter (quorum queues, the
    transient-queue deprecation), whether existing result queues have the
    arguments the current settings would declare, and how many result queues
    exist with their memory, with advice for each finding.  Needs RabbitMQ's
    management API.  Exits 1 if anything is a warning or a problem.
    """
    report = examine(backend_from(ctx))
    click.echo(json.dumps(report, indent=2) if as_json else to_text(report))
    ctx.exit(1 if report["level"] in ("warning", "problem") else 0)
