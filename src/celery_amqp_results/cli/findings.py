"""What ``doctor`` checks, as pure functions from broker facts to findings with advice.

Each check takes what the management API said (and what this process's settings
would declare) and returns one Finding: a level, one sentence of what was found,
and, when something should be done, one sentence of what to do.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..topology import SETTING_FOR_ARGUMENT
from .inventory import Inventory, Queue

OK, INFO, WARNING, PROBLEM = "ok", "info", "warning", "problem"

#: Oldest RabbitMQ this backend is tested with (SPEC: 3.10 or newer).
MIN_VERSION = (3, 10)

#: Share of a node's Erlang process limit or memory watermark that result queues
#: may take before doctor warns (each result queue costs two Erlang processes).
WARN_SHARE = 0.5
PROCESSES_PER_QUEUE = 2

#: Queue properties every result queue is declared with, besides its arguments.
RESULT_QUEUE_FLAGS = {"durable": True, "auto_delete": False, "exclusive": False}

#: Arguments the arguments check leaves out, on both sides: a queue's type is what the
#: broker reports as its ``type`` (RabbitMQ 4 lists ``x-queue-type`` for queues declared
#: without it), and check_queue_types compares that.
TYPE_ARGUMENTS = {"x-queue-type"}


@dataclass
class Finding:
    """One thing doctor found: ``level`` is ok, info, warning or problem."""

    level: str
    topic: str
    summary: str
    advice: Optional[str] = None

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)


def version_tuple(text: str) -> Tuple[int, ...]:
    """``"3.10.8"`` -> ``(3, 10, 8)``; the leading numbers of anything else."""
    return tuple(int(part) for part in re.findall(r"\d+", text or "")[:3])


def check_broker(overview: Mapping[str, Any],
                 nodes: Optional[Sequence[Mapping[str, Any]]], user: str) -> Finding:
    """Version, and the alarms that make every store hang (None: nodes not readable)."""
    version = overview.get("rabbitmq_version", "?")
    erlang = overview.get("erlang_version", "?")
    if nodes is None:
        what = (f"RabbitMQ {version} on Erlang {erlang}, node {overview.get('node', '?')} "
                f"(memory and disk alarms not checked: user {user!r} may not read nodes "
                f"without the 'monitoring' tag)")
    else:
        names = ", ".join(str(node.get("name")) for node in nodes) or "?"
        what = f"RabbitMQ {version} on Erlang {erlang}, {plural(len(nodes), 'node')}: {names}"
    alarms = [f"{node.get('name')}: {label} alarm" for node in nodes or ()
              for key, label in (("mem_alarm", "memory"), ("disk_free_alarm", "disk"))
              if node.get(key)]
    if alarms:
        return Finding(PROBLEM, "broker", f"{what}; {'; '.join(alarms)}",
                       "RabbitMQ blocks every publisher while an alarm is on, so workers "
                       "cannot store results: free memory or disk on that node, or forget "
                       "old results (purge --older-than).")
    if version_tuple(version) and version_tuple(version)[:2] < MIN_VERSION:
        return Finding(PROBLEM, "broker", what,
                       f"celery-amqp-results needs RabbitMQ {'.'.join(map(str, MIN_VERSION))} "
                       f"or newer (x-overflow=drop-head keeps one state per queue): upgrade "
                       f"the broker.")
    return Finding(OK, "broker", what)


def check_connection(uri: str, error: Optional[str]) -> Finding:
    """Whether this process's result backend can read from the broker over AMQP."""
    if error:
        return Finding(PROBLEM, "connection", f"the result backend {uri} fails: {error}",
                       "Check result_backend's host, port, user, password and vhost.")
    return Finding(OK, "connection", f"the result backend {uri} connects and reads")


def check_queue_types(flags: Optional[Sequence[Mapping[str, Any]]],
                      vhost: Optional[Mapping[str, Any]], results: Sequence[Queue],
                      user: str, expected: str = "classic") -> Finding:
    """Quorum queues: available or not, the vhost's default type, and result queue types.

    ``expected`` is the type this app's settings declare (``amqp_results_queue_type``).

    ``flags`` and ``vhost`` are None when the API does not show them to ``user``.
    """
    if flags is None:
        available = (f"quorum queue support not checked (user {user!r} may not read "
                     f"feature flags without the 'administrator' tag)")
    else:
        state = {flag.get("name"): flag.get("state") for flag in flags}.get("quorum_queue")
        available = ("quorum queues available (feature flag enabled)" if state == "enabled"
                     else f"quorum queues not enabled (feature flag {state or 'absent'})")
    by_type: Dict[str, List[str]] = defaultdict(list)
    for queue in results:
        by_type[queue_type(queue)].append(queue["name"])
    odd = {kind: names for kind, names in by_type.items() if kind != expected}
    if odd:
        listed = ", ".join(f"{len(names)} {kind}, e.g. {names[0]!r}"
                           for kind, names in sorted(odd.items()))
        return Finding(PROBLEM, "queue types", f"{available}; result queues that are not "
                       f"{expected}: {listed}",
                       f"This app's settings declare {expected} result queues "
                       f"(amqp_results_queue_type). A stream refuses basic.get, so reads "
                       f"fail; a queue of the other type clashes with this app's "
                       f"declarations. Use a vhost whose default queue type is classic, "
                       f"the same amqp_results_queue_type in every process, and let these "
                       f"expire or forget them.")
    default = (vhost or {}).get("default_queue_type") or "undefined"
    if vhost is None:
        default = "not readable by this user"
    elif expected == "classic" and default not in ("undefined", "classic"):
        return Finding(WARNING, "queue types",
                       f"{available}; vhost {vhost.get('name')!r} has default queue type "
                       f"{default!r}",
                       f"Queues declared without a type may become {default} queues on this "
                       f"vhost, and result queues are declared without one: use a vhost whose "
                       f"default queue type is classic (or undefined) for results.")
    return Finding(OK, "queue types",
                   f"{available}; all {len(results)} result queues are {expected} queues "
                   f"holding one state each, as designed (vhost default queue type: "
                   f"{default})")


def check_transient(inventory: Inventory,
                    deprecated_used: Optional[Sequence[Mapping[str, Any]]]) -> Finding:
    """Transient non-exclusive queues under the prefix: deprecated, refused by RabbitMQ 4.3."""
    transient = [queue["name"] for queue in inventory.results + inventory.other
                 + inventory.waiters
                 if queue.get("durable") is False and queue.get("exclusive") is False]
    in_use = None
    if deprecated_used is not None:
        in_use = any(feature.get("name") == "transient_nonexcl_queues"
                     for feature in deprecated_used)
    broker_says = ("no deprecations API to ask before RabbitMQ 3.13"
                   if in_use is None else
                   "the broker reports transient non-exclusive queues in use on it"
                   if in_use else "the broker reports no transient non-exclusive queues")
    if transient:
        return Finding(WARNING, "transient queues",
                       f"{len(transient)} transient non-exclusive queues under the prefix, "
                       f"e.g. {transient[0]!r}; {broker_says}",
                       "RabbitMQ deprecates transient non-exclusive queues and 4.3 refuses "
                       "them. This backend declares durable result queues and exclusive "
                       "waiter queues only, so these come from something else (an older "
                       "version or another tool): delete them.")
    return Finding(OK, "transient queues",
                   f"none under the prefix: this backend declares durable result queues "
                   f"and exclusive waiter queues, which the transient_nonexcl_queues "
                   f"deprecation does not touch ({broker_says})")


def queue_type(queue: Queue) -> str:
    """The queue's type as the management API reports it (classic when not said)."""
    return str(queue.get("type") or "classic")


def argument_differences(queue: Queue, expected: Mapping[str, Any]
                         ) -> List[Tuple[str, Any, Any]]:
    """``(name, found, expected)`` for each argument or flag where ``queue`` differs."""
    found = {key: value for key, value in (queue.get("arguments") or {}).items()
             if key not in TYPE_ARGUMENTS}
    wanted = {key: value for key, value in expected.items() if key not in TYPE_ARGUMENTS}
    diffs = [(key, found.get(key), wanted.get(key)) for key in sorted(set(found) | set(wanted))
             if found.get(key) != wanted.get(key)]
    diffs += [(flag, queue.get(flag), value) for flag, value in RESULT_QUEUE_FLAGS.items()
              if flag in queue and queue.get(flag) != value]
    return diffs


def check_arguments(results: Sequence[Queue], expected: Mapping[str, Any],
                    expected_type: str = "classic") -> Finding:
    """Whether the result queues were declared as this process's settings would declare them.

    Queues of another type than ``expected_type`` are check_queue_types' finding, not
    this one (their type's own arguments differ as a matter of course).
    """
    shown = ", ".join(f"{key}={value!r}" for key, value in sorted(expected.items()))
    # Queues that differ in the same way are reported together (values as repr: hashable).
    by_difference: Dict[Tuple[Tuple[str, str, str], ...], List[str]] = defaultdict(list)
    checked = [queue for queue in results if queue_type(queue) == expected_type]
    for queue in checked:
        found = argument_differences(queue, expected)
        if found:
            key = tuple((name, repr(got), repr(want)) for name, got, want in found)
            by_difference[key].append(queue["name"])
    if not by_difference:
        return Finding(OK, "arguments", f"all {len(checked)} {expected_type} result queues "
                       f"have the arguments this process would declare ({shown})")
    count = sum(len(names) for names in by_difference.values())
    parts: List[str] = []
    settings: List[str] = []
    for diffs, names in sorted(by_difference.items(), key=lambda item: -len(item[1])):
        described = ", ".join(f"{key}={found} (here: {want})" for key, found, want in diffs)
        parts.append(f"{len(names)} with {described}, e.g. {names[0]!r}")
        settings += [SETTING_FOR_ARGUMENT.get(key, "a queue setting") for key, _, _ in diffs]
    setting_list = ", ".join(dict.fromkeys(settings))
    return Finding(
        PROBLEM, "arguments",
        f"{count} of {len(checked)} {expected_type} result queues were declared with other "
        f"arguments than this process would use: {'; '.join(parts)}",
        f"Every worker and client on this vhost must agree on {setting_list}; a store "
        f"into one of these queues logs a PRECONDITION_FAILED clash. If a setting changed "
        f"on purpose, the old queues go away by their own x-expires after their last use "
        f"(or forget/purge them sooner); otherwise make the setting equal everywhere.")


def check_capacity(inventory: Inventory, nodes: Optional[Sequence[Mapping[str, Any]]],
                   expires: Optional[float], stats_disabled: bool) -> Finding:
    """How many result queues exist, their memory, and their share of the node's limits."""
    results = inventory.results
    empty = sum(1 for queue in results if queue.get("messages") == 0)
    sized = [queue["memory"] for queue in results if isinstance(queue.get("memory"), int)]
    memory = sum(sized)
    counts = (f"{plural(len(results), 'result queue')} ({len(inventory.tasks)} task, "
              f"{len(inventory.groups)} group; {empty} empty by the broker's statistics, "
              f"which lag a few seconds), {plural(len(inventory.waiters), 'waiter queue')}, "
              f"{plural(len(inventory.other), 'other backend queue')}")
    if stats_disabled:
        mem_text = "memory not reported (management statistics are disabled)"
    elif not results:
        mem_text = "no result memory"
    elif not sized:
        mem_text = "memory not reported yet (statistics arrive every few seconds)"
    else:
        mem_text = (f"result queues use {mib(memory)} of queue memory "
                    f"({memory / len(sized) / 1024:.1f} KiB each, {len(sized)} measured)")
    summary = f"{counts}; {mem_text}"
    proc_total = sum(int(node.get("proc_total") or 0) for node in nodes or ())
    mem_limit = sum(int(node.get("mem_limit") or 0) for node in nodes or ())
    proc_share = len(results) * PROCESSES_PER_QUEUE / proc_total if proc_total else 0.0
    mem_share = memory / mem_limit if mem_limit else 0.0
    if proc_share > WARN_SHARE or mem_share > WARN_SHARE:
        return Finding(
            WARNING, "capacity",
            f"{summary}; that is {proc_share:.0%} of the Erlang process limit and "
            f"{mem_share:.0%} of the memory watermark",
            "Each stored result is a queue: lower result_expires, forget results once "
            "read, or run `celery amqp-results purge --older-than ...` (README, Capacity).")
    if not expires:
        return Finding(
            WARNING, "capacity", f"{summary}; result_expires is off, so results are kept "
            f"until forgotten",
            "Set result_expires, or run `celery amqp-results purge --older-than 7d` "
            "regularly: every result kept is a queue on the broker.")
    if empty:
        return Finding(INFO, "capacity", summary,
                       f"Empty result queues ({empty}) hold no state (it expired, or "
                       f"none was stored yet, or the statistics lag); an empty queue goes "
                       f"away by itself result_expires after its last use.")
    return Finding(INFO, "capacity", summary)


def plural(count: int, noun: str) -> str:
    """``"1 queue"``, ``"2 queues"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def mib(size: int) -> str:
    """Bytes as MiB with one decimal."""
    return f"{size / 1024 / 1024:.1f} MiB"


def worst(findings: Sequence[Finding]) -> str:
    """The most serious level among ``findings``."""
    order = [OK, INFO, WARNING, PROBLEM]
    return max((finding.level for finding in findings), key=order.index, default=OK)
