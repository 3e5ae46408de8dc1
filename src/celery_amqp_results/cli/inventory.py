"""Sorting the queues under the backend's prefix into result, group, waiter and other queues.

Only ``<prefix>task.<id>`` and ``<prefix>group.<id>`` hold results.  Waiter
queues belong to waiting clients, and anything else under the prefix (chord
bookkeeping, say) is the backend's own: ``purge`` never touches either.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List

from ..naming import Names

Queue = Dict[str, Any]


@dataclass
class Inventory:
    """Queues under one prefix, by kind, each as the management API lists it."""

    tasks: List[Queue] = field(default_factory=list)
    groups: List[Queue] = field(default_factory=list)
    waiters: List[Queue] = field(default_factory=list)
    other: List[Queue] = field(default_factory=list)

    @property
    def results(self) -> List[Queue]:
        """The queues that hold a result: task results and saved groups."""
        return self.tasks + self.groups


def classify(names: Names, queues: Iterable[Queue]) -> Inventory:
    """Sort ``queues`` (dicts with at least ``name``) by what their name says they are."""
    inventory = Inventory()
    for queue in queues:
        name = queue["name"]
        if name.startswith(names.task_prefix) and len(name) > len(names.task_prefix):
            inventory.tasks.append(queue)
        elif name.startswith(names.group_prefix) and len(name) > len(names.group_prefix):
            inventory.groups.append(queue)
        elif name.startswith(names.waiter_prefix):
            inventory.waiters.append(queue)
        elif name.startswith(names.prefix):
            inventory.other.append(queue)
    return inventory


def id_of(names: Names, queue_name: str) -> str:
    """The task or group id a result queue is named after."""
    for prefix in (names.task_prefix, names.group_prefix):
        if queue_name.startswith(prefix):
            return queue_name[len(prefix):]
    raise ValueError(f"{queue_name!r} is not a result queue under {names.prefix!r}")
