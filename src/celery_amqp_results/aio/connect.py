"""How the asyncio API reaches the backend's broker: same hosts, port, user, vhost and TLS.

The addresses come from the backend's own kombu connection template, so the
asyncio side talks to exactly the broker the synchronous backend uses, failover
list included.  Errors name host, port, vhost and user, never the password.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import ssl
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

import aio_pika
import aiormq.exceptions
from celery.exceptions import TimeoutError
from kombu import Connection
from kombu.utils.functional import fxrange

from ..errors import ResultBrokerError


@dataclass(frozen=True)
class Address:
    """One broker to try: where it is, who we are there, and how to secure the link."""

    host: str
    port: int
    login: str
    password: str = field(repr=False)
    vhost: str
    ssl_options: Any = None  # None/False: plain TCP; True or a dict: TLS (py-amqp's forms)
    connect_timeout: Optional[float] = None

    def describe(self) -> str:
        """Host, port, vhost and user for messages; never the password."""
        return f"{self.host}:{self.port} vhost {self.vhost!r} as user {self.login!r}"


def addresses(template: Connection) -> List[Address]:
    """The broker addresses of a kombu connection: its own, then its failover alternates."""
    found = [_address(template)]
    for alternate in (template.alt or [])[1:]:
        conn = template.clone()
        conn.switch(alternate)
        found.append(_address(conn))
    return found


def _address(conn: Connection) -> Address:
    use_ssl = conn.ssl or None
    port = conn.port or (5671 if use_ssl else 5672)
    timeout = conn.connect_timeout
    return Address(host=str(conn.hostname or "localhost"), port=int(port),
                   login=str(conn.userid or "guest"), password=str(conn.password or ""),
                   vhost=str(conn.virtual_host or "/"), ssl_options=use_ssl,
                   connect_timeout=float(timeout) if timeout else None)


def ssl_context(options: Any, host: str) -> Optional[ssl.SSLContext]:
    """An SSLContext equivalent to py-amqp's TLS options (``amqp_results_ssl``), or None.

    py-amqp takes either ``{"context": {...create_default_context kwargs...}, ...}``
    or ``ca_certs``/``cert_reqs``/``certfile``/``keyfile``/``server_hostname``/...;
    the same dict must mean the same thing here.  asyncio checks the certificate
    against the host it connects to, so a ``server_hostname`` naming another host
    is refused rather than silently ignored.
    """
    if not options:
        return None
    if options is True:
        return ssl.create_default_context()
    if not isinstance(options, Mapping):
        raise TypeError(f"TLS options must be True or a dict, got {type(options).__name__}")
    opts: Dict[str, Any] = dict(options)
    server_hostname = opts.pop("server_hostname", _ABSENT)
    if server_hostname not in (_ABSENT, None, host):
        raise ValueError(
            f"TLS option server_hostname={server_hostname!r} differs from the broker host "
            f"{host!r}: the asyncio client checks the certificate against the host it "
            f"connects to; put {server_hostname!r} in the result backend URL instead")
    if "context" in opts:
        context_options = dict(opts.pop("context") or {})
        check_hostname = context_options.pop("check_hostname", None)
        context = ssl.create_default_context(**context_options)
        context.check_hostname = bool(check_hostname)
        _refuse_unknown(opts, set())
        return context
    _refuse_unknown(opts, {"ca_certs", "cert_reqs", "certfile", "keyfile", "ciphers",
                           "ssl_version", "tls_minimum_version", "tls_maximum_version"})
    context = ssl.SSLContext(opts.get("ssl_version") or ssl.PROTOCOL_TLS_CLIENT)
    if opts.get("tls_minimum_version") is not None:
        context.minimum_version = opts["tls_minimum_version"]
    if opts.get("tls_maximum_version") is not None:
        context.maximum_version = opts["tls_maximum_version"]
    if opts.get("certfile") is not None:
        context.load_cert_chain(opts["certfile"], opts.get("keyfile"))
    if opts.get("ca_certs") is not None:
        context.load_verify_locations(opts["ca_certs"])
    if opts.get("ciphers") is not None:
        context.set_ciphers(opts["ciphers"])
    # py-amqp checks the host name exactly when server_hostname is given (kombu fills
    # a None with the URL's host); the order matters: check_hostname before verify_mode.
    context.check_hostname = server_hostname is not _ABSENT
    if opts.get("cert_reqs") is not None:
        context.verify_mode = opts["cert_reqs"]
    if opts.get("ca_certs") is None and context.verify_mode != ssl.CERT_NONE:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return context


_ABSENT = object()


def _refuse_unknown(opts: Mapping[str, Any], known: set) -> None:
    unknown = sorted(set(opts) - known - {"server_side", "do_handshake_on_connect",
                                          "suppress_ragged_eofs"})
    if unknown:
        raise ValueError(f"TLS option(s) {', '.join(unknown)} not understood by the "
                         f"asyncio client")


def describe_failure(address: Address, exc: BaseException) -> ResultBrokerError:
    """A ResultBrokerError naming the broker and the cause.

    Retryable only for what may pass: a broker that is down, unreachable, slow
    to answer or that dropped the connection.  A refused login, an unknown vhost,
    a TLS failure or anything unexpected raise at once.
    """
    refused_vhost = "Connection.Close" in str(exc) and "Connection.OpenOk" in str(exc)
    final = refused_vhost or isinstance(exc, (
        aiormq.exceptions.AuthenticationError, aiormq.exceptions.ProbableAuthenticationError,
        ssl.SSLError, ValueError)) or not isinstance(exc, (
            OSError, asyncio.TimeoutError, aiormq.exceptions.AMQPConnectionError))
    if refused_vhost:
        # aiormq drops the broker's reply text here; the broker closes the connection
        # at Connection.Open (530 NOT_ALLOWED) only for a vhost it does not have or the
        # user may not use.  Built from the address alone: nothing to mask.
        reason = (f"Connection.open: NOT_ALLOWED - no vhost {address.vhost!r}, or user "
                  f"{address.login!r} may not use it")
    else:
        reason = _reason(exc)
        if address.password:
            # Only the library's text can hold the password; the address parts are
            # ours (a user named like the password stays named).
            reason = reason.replace(address.password, "****")
    return ResultBrokerError(
        f"cannot use the result broker at {address.describe()}: {reason}",
        retryable=not final)


def _reason(exc: BaseException) -> str:
    """The cause as py-amqp words it, so both APIs print the same line for one failure.

    asyncio says "[Errno 111] Connect call failed ('host', port)" where the socket
    module (py-amqp) says "[Errno 111] Connection refused"; a connect timeout is
    "timed out" in both.
    """
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and \
            not isinstance(exc, ssl.SSLError):
        return f"[Errno {exc.errno}] {os.strerror(exc.errno)}"
    return f"{type(exc).__name__}: {exc}"


async def connect(address: Address, name: str) -> aio_pika.abc.AbstractConnection:
    """Open one (non-robust) aio-pika connection to ``address``; ResultBrokerError if not.

    Not aio-pika's robust connection: after a loss the waiters must bind and peek
    again, which only they know how to do, so reconnecting is theirs.
    """
    context = ssl_context(address.ssl_options, address.host)
    try:
        await reachable(address, context)
    except Exception as exc:
        raise describe_failure(address, exc) from exc
    try:
        return await aio_pika.connect(
            host=address.host, port=address.port, login=address.login,
            password=address.password, virtualhost=address.vhost,
            ssl=context is not None, ssl_context=context,
            timeout=address.connect_timeout,
            client_properties={"connection_name": name})
    except Exception as exc:
        # aiormq 6 and 7 raise different types for the same failure (an unknown vhost
        # is pamqp's AMQPInternalError in one and InvalidFrameError in the other).
        error = describe_failure(address, exc)
        # The cause is kept for tracebacks only if it cannot show the password.
        safe = not address.password or address.password not in repr(exc) + str(exc)
        raise error from (exc if safe else None)


async def reachable(address: Address, context: Optional[ssl.SSLContext]) -> None:
    """Open and close the transport aiormq is about to open (TCP, and TLS if asked).

    aiormq logs every transport it fails to create at ERROR ("error when creating
    transport") before raising, and a broker that is down fails there on every try;
    trying the transport here first lets that failure come to the caller as a
    ResultBrokerError and nothing else.  The broker sees a connection that closes
    before the AMQP header, which it drops without a word.
    """
    timeout = address.connect_timeout or DEFAULT_CONNECT_TIMEOUT
    _, writer = await asyncio.wait_for(
        asyncio.open_connection(address.host, address.port, ssl=context), timeout)
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:  # pragma: no cover - the peer may reset the unused connection
        pass


#: Connect timeout when the backend's connection sets none (kombu's default for it).
DEFAULT_CONNECT_TIMEOUT = 4.0


async def connect_any(candidates: List[Address], name: str, policy: Mapping[str, Any],
                      deadline: Optional[float],
                      on_failure: Optional[Callable[[ResultBrokerError], None]] = None,
                      ) -> aio_pika.abc.AbstractConnection:
    """Connect to the first broker of ``candidates`` that answers, retrying by ``policy``.

    ``policy`` is the backend's retry policy (max_retries, interval_start/step/max).
    A refused login, unknown vhost or TLS failure raises at once.  With a deadline
    (event-loop time), a broker that stays away past it is a celery TimeoutError,
    as it is for the synchronous waiter.  ``on_failure`` hears of each failed try,
    so a caller that stops waiting before the retries end can say why.
    """
    loop = asyncio.get_running_loop()
    max_retries = policy.get("max_retries")
    interval_max = float(policy.get("interval_max", 1))
    intervals = fxrange(policy.get("interval_start", 0), interval_max,
                        policy.get("interval_step", 1), repeatlast=True)
    last: Optional[ResultBrokerError] = None
    for attempt in itertools.count():
        for address in candidates:
            try:
                if deadline is None:
                    return await connect(address, name)
                left = max(deadline - loop.time(), 0.001)
                return await asyncio.wait_for(connect(address, name), left)
            except asyncio.TimeoutError as exc:
                raise TimeoutError(
                    f"The operation timed out while connecting to the result broker "
                    f"at {address.describe()}") from exc
            except ResultBrokerError as exc:
                if on_failure is not None:
                    on_failure(exc)
                if not exc.retryable:
                    raise
                last = exc
        assert last is not None
        if max_retries is not None and attempt >= max_retries:
            raise last
        pause = min(float(next(intervals)), interval_max)
        if deadline is not None and loop.time() + pause >= deadline:
            raise TimeoutError(f"The operation timed out: {last}") from last
        await asyncio.sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover
