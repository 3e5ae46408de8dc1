"""Exceptions raised by the backend: each one names the task and the cause."""
from __future__ import annotations

from typing import Optional

from celery.exceptions import (
    BackendError,
    BackendGetMetaError,
    BackendStoreError,
    SecurityError,
)
from kombu.exceptions import EncodeError


class BacklogLimitExceeded(Exception):
    """Too much state history to fast-forward.

    Raised by the bounded fast-forward reads (``backlog_limit``) when a queue
    holds more states than the limit allows.  The default topology keeps one
    state per task, so normal use never raises it.
    """


class InvalidTaskIdError(ValueError):
    """A task id that cannot name a result: empty, not a string, or too long."""


class InvalidResultError(BackendGetMetaError):
    """A stored result that cannot be read: undecodable, disallowed content type, missing fields.

    The message is left where it was (it is never acknowledged away), so the
    cause can be inspected and fixed; the backend keeps working for other tasks.
    ``args`` is ``(message, task_id, queue)``: pickle and Celery's JSON form of an
    exception both rebuild it with ``cls(*args)``.  ``cause`` survives pickle only.
    """

    def __init__(self, message: str, task_id: str = "", queue: str = "",
                 cause: Optional[BaseException] = None) -> None:
        super().__init__(message, task_id=task_id)
        self.args = (message, task_id, queue)
        self.queue = queue
        self.cause = cause

    def __str__(self) -> str:
        return str(self.args[0])


class UnsafeResultError(InvalidResultError, SecurityError):
    """A stored failure names something Celery refuses to rebuild as an exception
    (e.g. ``os.system``): Celery's SecurityError, naming the task."""


class ResultStoreError(BackendStoreError):
    """A state could not be stored: the broker refused it or stayed unreachable.

    ``args`` is ``(message, task_id, state)``, so ``cls(*args)`` rebuilds it.
    """

    def __init__(self, message: str, task_id: str = "", state: str = "") -> None:
        super().__init__(message, task_id=task_id, state=state)
        self.args = (message, task_id, state)

    def __str__(self) -> str:
        return str(self.args[0])


class ResultTooLargeError(ResultStoreError, EncodeError):
    """A state larger than ``amqp_results_max_result_size``: refused before publishing.

    An EncodeError too, so a worker marks the task FAILURE with this message, as
    Celery does for any result it cannot encode.
    """


class ResultBrokerError(BackendError):
    """The result broker cannot be reached or refused the login; names host and vhost.

    ``retryable`` is False for a refused login or an unknown vhost (retrying will
    not help) and True for a broker that is down or unreachable.  ``args`` is
    ``(message, retryable)``: a prefork pool pickles this exception from its child
    to the main process, which rebuilds it with ``cls(*args)``.
    """

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message, retryable)
        self.retryable = retryable

    def __str__(self) -> str:
        return str(self.args[0])
