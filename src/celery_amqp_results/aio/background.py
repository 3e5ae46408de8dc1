"""Broker work that a caller's cancellation must not interrupt halfway.

aiormq closes a channel when an RPC on it is cancelled, and a cancelled peek
could leave a message in hand; so such work runs as a task of its own that the
caller only awaits through ``asyncio.shield``.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, TypeVar

T = TypeVar("T")


def retrieve(task: asyncio.Future) -> None:
    """Fetch a finished task's outcome: if every caller awaiting it was cancelled,
    asyncio would otherwise log "exception was never retrieved"."""
    if not task.cancelled():
        task.exception()


async def shielded(work: Awaitable[T]) -> T:
    """Run ``work`` to its end even if the awaiting caller is cancelled meanwhile."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(retrieve)
    return await asyncio.shield(task)
