"""What every subcommand needs: the app's backend, its management API, errors as exits.

A command's failure is one line on stderr and a non-zero exit, never a traceback:
``EX_UNAVAILABLE`` (69, as Celery's own commands use) when the broker or its
management API cannot be used, 2 for bad input (an app whose result backend cannot
be loaded or is not this one included), 130 when interrupted (Ctrl-C), 1 for
anything else.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, TypeVar

import click
from celery.exceptions import ImproperlyConfigured
from celery.platforms import EX_UNAVAILABLE
from kombu import Connection

from ..backend import AMQPBackend
from ..connection import make_connection
from ..errors import InvalidResultError, InvalidTaskIdError, ResultBrokerError
from ..management import ManagementAPI, ManagementError, management_api

F = TypeVar("F", bound=Callable[..., Any])

#: A person at a terminal wants an answer: an unreachable broker is reported after
#: about two seconds, not after the twenty tries (~19 s) a worker's store makes.
COMMAND_RETRY_POLICY: Dict[str, Any] = {
    "max_retries": 2, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 1}


#: Exit code of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it).
EX_INTERRUPTED = 130


class Unavailable(click.ClickException):
    """The result broker or its management API cannot be used (exit 69)."""

    exit_code = EX_UNAVAILABLE


class BadInput(click.ClickException):
    """Input that cannot work, found after parsing (exit 2, as a usage error)."""

    exit_code = 2


class Interrupted(click.ClickException):
    """Ctrl-C: one line instead of click's "Aborted!" and exit 1."""

    exit_code = EX_INTERRUPTED

    def __init__(self, message: str = "interrupted") -> None:
        super().__init__(message)


def backend_from(ctx: click.Context) -> AMQPBackend:
    """The AMQPBackend of the app that ``celery -A`` loaded, or a clear error."""
    app = getattr(ctx.obj, "app", None)
    if app is None:
        raise click.UsageError(
            "no Celery app: run this as `celery -A proj amqp-results ...`")
    try:
        backend = app.backend
    except (ImproperlyConfigured, ImportError, ValueError, TypeError) as exc:
        raise BadInput(f"the app's result backend cannot be loaded: {exc}") from None
    if not isinstance(backend, AMQPBackend):
        raise click.UsageError(
            f"the app's result_backend is {type(backend).__name__} "
            f"({backend.as_uri() if hasattr(backend, 'as_uri') else '?'}): "
            f"`celery amqp-results` reads only celery-amqp-results' amqp:// backend")
    # Each backend has its own copy of the policy; this one serves this command only.
    backend.retry_policy.update(COMMAND_RETRY_POLICY)
    backend.always_retry = False  # result_backend_always_retry would retry for ever
    return backend


def patient(backend: AMQPBackend) -> None:
    """Give the backend its usual retry policy back, for a long wait that should ride out
    a broker restart (``watch``, once the broker has answered)."""
    backend.retry_policy.update(type(backend).retry_policy)


def connection_for(backend: AMQPBackend) -> Connection:
    """A new, unopened connection to the backend's broker, as its URL and settings say."""
    return make_connection(backend.app, backend.url, None, backend.settings.ssl)


def management_for(backend: AMQPBackend) -> ManagementAPI:
    """The management API of the backend's broker and vhost (see management.py)."""
    connection = connection_for(backend)
    return management_api(connection, connection.virtual_host or "/",
                          backend.settings.management_url)


def reports_errors(command: F) -> F:
    """Turn the backend's and the API's errors into one line and an exit code."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (ResultBrokerError, ManagementError) as exc:
            raise Unavailable(str(exc)) from None
        except InvalidTaskIdError as exc:
            raise click.UsageError(str(exc)) from None
        except InvalidResultError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise Interrupted() from None

    return run  # type: ignore[return-value]
