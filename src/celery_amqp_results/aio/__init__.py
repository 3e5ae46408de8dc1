"""asyncio API for the results of this backend: ``AsyncResults``.

Needs the optional dependency aio-pika: ``pip install "celery-amqp-results[asyncio]"``.
See docs/asyncio.md.
"""
from __future__ import annotations

try:
    import aio_pika  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "celery_amqp_results.aio needs the aio-pika package: "
        "pip install 'celery-amqp-results[asyncio]'") from exc

from .hub import HubClosed
from .results import AsyncResults

__all__ = ["AsyncResults", "HubClosed"]
