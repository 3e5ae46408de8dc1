"""Which broker the results live on, and how connections to it are made and shared.

``amqp://host/vhost`` (or ``amqps://``) is honoured as given.  A URL with nothing
after the scheme reuses the task broker's connection settings, as Celery 4's
backend always did.  Every connection runs with publisher confirms, so a store
returns only once the broker holds the state.
"""
from __future__ import annotations

import os
import ssl
import threading
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Type

from amqp.exceptions import AccessRefused, NotAllowed
from celery.exceptions import ImproperlyConfigured
from kombu import Connection
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url

from .errors import ResultBrokerError

#: Transports that speak AMQP 0-9-1 through py-amqp.
AMQP_TRANSPORTS = {"amqp", "amqps", "pyamqp"}


def is_bare(url: Optional[str]) -> bool:
    """True for ``amqp://``/``amqps://`` with nothing after the scheme (or no URL)."""
    if not url:
        return True
    _, sep, rest = url.partition("://")
    return bool(sep) and rest.strip("/") == ""


def sanitize(url: str) -> str:
    """``url`` with every password masked, also in ``;``-separated failover lists."""
    return ";".join(maybe_sanitize_url(part) for part in url.split(";"))


def describe(connection: Connection) -> str:
    """Host, port, vhost and user of ``connection`` for messages; never the password."""
    port = connection.port or (5671 if connection.ssl else 5672)
    return (f"{connection.hostname}:{port} vhost "
            f"{connection.virtual_host!r} as user {connection.userid!r}")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: Optional[BaseException] = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def failures(connection: Connection) -> Tuple[Type[BaseException], ...]:
    """What a failed connect raises: py-amqp's connection errors, kombu's re-raise of
    them, and the login refusal (which py-amqp files under channel errors)."""
    return (*connection.connection_errors, OperationalError, AccessRefused, NotAllowed)


def broker_error(connection: Connection, exc: BaseException) -> ResultBrokerError:
    """A ResultBrokerError saying which broker failed and why (``raise ... from exc``)."""
    # A refused login, an unknown vhost or a TLS failure (bad certificate, wrong CA)
    # will not go away by retrying; a broker that is down may come back.
    final = any(isinstance(cause, (AccessRefused, NotAllowed, ssl.SSLError))
                for cause in _causes(exc))
    return ResultBrokerError(
        f"cannot use the result broker at {describe(connection)}: {exc}",
        retryable=not final)


def make_connection(app: Any, url: Optional[str], connection: Optional[Connection],
                    ssl: Any = None) -> Connection:
    """Build the connection template every pooled or waiter connection is cloned from."""
    conf = app.conf
    options: Dict[str, Any] = dict(conf.get("result_backend_transport_options") or {})
    options["confirm_publish"] = True
    if connection is not None:
        base = connection
    elif is_bare(url):
        broker = conf.broker_write_url or conf.broker_url or "amqp://"
        if not isinstance(broker, str):
            broker = ";".join(broker)
        scheme = broker.partition("://")[0] if "://" in broker else broker
        if scheme not in AMQP_TRANSPORTS:
            # Checked on the URL: building a connection would import that transport.
            raise ImproperlyConfigured(
                f"result_backend {url or 'amqp://'!r} reuses the task broker's connection, "
                f"but the broker is {sanitize(broker)!r}, not RabbitMQ: give the "
                f"result backend a full URL such as amqp://user:password@host:5672/vhost")
        base = app.connection_for_write()
        options = dict(base.transport_options or {}, **options)
    else:
        assert url is not None
        use_ssl = ssl if ssl is not None else (True if url.startswith("amqps") else None)
        base = Connection(
            url, ssl=use_ssl, heartbeat=conf.get("broker_heartbeat") or 0,
            connect_timeout=conf.get("broker_connection_timeout") or 4)
        if base.transport_cls not in AMQP_TRANSPORTS:
            raise ImproperlyConfigured(f"not an AMQP URL: {sanitize(url)!r}")
    return base.clone(transport_options=options)


class ConnectionPool:
    """A process-local kombu pool of confirm-mode connections, reset after fork.

    A forked child must not talk on its parent's sockets (a close frame from the
    child would close the parent's connection), so it drops them unclosed.
    """

    def __init__(self, factory: Callable[[], Connection], limit: Optional[int]) -> None:
        self._factory = factory
        self._limit = limit
        self._pool: Any = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def acquire(self) -> Any:
        """A pooled connection, to use in a ``with`` block."""
        return self._current().acquire(block=True)

    def _current(self) -> Any:
        if self._pid != os.getpid():
            self._forget_after_fork()
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = self._factory().Pool(limit=self._limit)
                pool = self._pool
        return pool

    def _forget_after_fork(self) -> None:
        self._pool = None
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close every connection of this process's pool."""
        pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.force_close_all()
