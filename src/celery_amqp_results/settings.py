"""This package's own settings, read from the Celery app's configuration.

Every setting has one name and one meaning; README.md lists them with these
defaults.  Celery's own ``result_*`` settings are read where Celery defines them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from .topology import QUEUE_TYPES

#: Prefix of every queue this backend declares (results, groups, waiters).
#: All processes sharing a vhost must agree on it.
DEFAULT_QUEUE_PREFIX = "celery-results."

#: How many times, in all, a reader reads a result queue that exists but has
#: nothing ready (another reader holds its state for an instant) before it
#: answers PENDING (read.py).
DEFAULT_PEEK_ATTEMPTS = 64

#: Seconds a reader of the ``celery4`` topology keeps re-reading a queue that
#: exists but is empty: there a Celery 4 reader declares the queue of a task it
#: polls, so an empty queue is ordinary and only time can bound the wait.
DEFAULT_PEEK_GRACE = 0.5

#: Seconds a read (``AsyncResult.state``, ``get_task_meta``, ``GroupResult.restore``)
#: may spend retrying a result broker it cannot reach before it raises
#: ResultBrokerError.  Stores keep ``retry_policy`` (~19 s): a lost state is worse
#: than a late one, and a web request polling a result should not hang.
DEFAULT_READ_TIMEOUT = 2.0


#: Largest serialized state, in bytes, that is published (RabbitMQ's default
#: ``max_message_size``); a larger one raises ResultTooLargeError before publishing.
DEFAULT_MAX_RESULT_SIZE = 128 * 1024 * 1024

#: Schemes a management API URL (``amqp_results_management_url``) may have.
MANAGEMENT_SCHEMES = ("http://", "https://")

#: Values of ``amqp_results_topology``: this package's own topology (newest state
#: only, reads never destroy) or Celery 4.4's, for rolling migrations from a
#: Celery 4 fleet (docs/migrating-from-celery4.md).
TOPOLOGIES = ("default", "celery4")


def read_topology(conf: Mapping[str, Any]) -> str:
    """``amqp_results_topology`` from a Celery configuration; a clear error if unknown.

    Read on its own too: the backend picks its class from it before anything else.
    """
    topology = conf.get("amqp_results_topology")
    if topology is None:
        return "default"
    if topology not in TOPOLOGIES:
        raise ValueError(
            f"amqp_results_topology must be one of {', '.join(map(repr, TOPOLOGIES))}, "
            f"got {topology!r}")
    return str(topology)


def _seconds(conf: Mapping[str, Any], name: str, default: float) -> float:
    """Setting ``name``: a number of seconds >= 0 (None: ``default``), else a clear error."""
    value = conf.get(name)
    if value is None:
        return default
    try:
        seconds = float(value) if not isinstance(value, bool) else -1.0
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return seconds


@dataclass(frozen=True)
class Settings:
    """The package's settings, with their defaults."""

    queue_prefix: str = DEFAULT_QUEUE_PREFIX
    peek_attempts: int = DEFAULT_PEEK_ATTEMPTS
    peek_grace: float = DEFAULT_PEEK_GRACE
    read_timeout: float = DEFAULT_READ_TIMEOUT
    ssl: Optional[Any] = None
    max_result_size: Optional[int] = DEFAULT_MAX_RESULT_SIZE
    #: RabbitMQ management API root for ``celery amqp-results`` (None: derived
    #: from the result backend URL, same host, port 15672).
    management_url: Optional[str] = None
    #: ``amqp_results_topology``: "default", or "celery4" for Celery 4.4's wire format.
    topology: str = "default"
    #: ``amqp_results_queue_type``: "classic", or "quorum" for result queues replicated
    #: over a cluster's nodes (docs/cluster.md).
    queue_type: str = "classic"

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any]) -> Settings:
        """Read ``amqp_results_*`` settings from a Celery configuration."""
        prefix = conf.get("amqp_results_queue_prefix") or DEFAULT_QUEUE_PREFIX
        if not isinstance(prefix, str):
            raise TypeError(f"amqp_results_queue_prefix must be a string, got {prefix!r}")
        grace = _seconds(conf, "amqp_results_peek_grace", DEFAULT_PEEK_GRACE)
        attempts = conf.get("amqp_results_peek_attempts", DEFAULT_PEEK_ATTEMPTS)
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(
                f"amqp_results_peek_attempts must be a whole number >= 1, got {attempts!r}")
        read_timeout = _seconds(conf, "amqp_results_read_timeout", DEFAULT_READ_TIMEOUT)
        size = conf.get("amqp_results_max_result_size", DEFAULT_MAX_RESULT_SIZE)
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)
                                 or size <= 0):
            raise ValueError(
                f"amqp_results_max_result_size must be a positive number of bytes or "
                f"None, got {size!r}")
        use_ssl = conf.get("amqp_results_ssl")
        if use_ssl is not None and not isinstance(use_ssl, (bool, dict)):
            # py-amqp takes True or a dict of options; anything else would be ignored.
            raise TypeError(
                f"amqp_results_ssl must be None, a bool or a dict of TLS options "
                f"(ca_certs, cert_reqs, certfile, keyfile, server_hostname, or "
                f"context={{...}}), got {type(use_ssl).__name__}")
        management_url = conf.get("amqp_results_management_url")
        if management_url is not None and not (
                isinstance(management_url, str) and management_url.startswith(MANAGEMENT_SCHEMES)):
            # The value is not echoed: it may carry a password.
            raise ValueError(
                f"amqp_results_management_url must be an http:// or https:// URL of "
                f"RabbitMQ's management API, such as http://rabbit:15672/; got a "
                f"{type(management_url).__name__} that is not one")
        topology = read_topology(conf)
        queue_type = conf.get("amqp_results_queue_type") or "classic"
        if queue_type not in QUEUE_TYPES:
            raise ValueError(
                f"amqp_results_queue_type must be one of "
                f"{', '.join(map(repr, QUEUE_TYPES))}, got {queue_type!r}")
        if queue_type == "quorum" and topology == "celery4":
            # Celery 4's queues are auto-delete, which quorum queues refuse.
            raise ValueError(
                "amqp_results_queue_type 'quorum' needs the default topology: Celery 4's "
                "result queues are auto-delete, which quorum queues cannot be")
        if topology == "celery4":
            refuse_for_celery4(conf)
        return cls(queue_prefix=prefix, peek_attempts=attempts, peek_grace=grace,
                   read_timeout=read_timeout, ssl=use_ssl,
                   max_result_size=size, management_url=management_url,
                   topology=topology, queue_type=queue_type)


def refuse_for_celery4(conf: Mapping[str, Any]) -> None:
    """Celery 5.7 settings the celery4 topology cannot honour: a ValueError naming each.

    Celery 4 clients read those queues, and Celery 4 neither decompresses a state
    nor knows a failure's own expiry (its queues expire as a whole, by x-expires).
    """
    if conf.get("result_compression"):
        raise ValueError(
            f"result_compression {conf.get('result_compression')!r} needs the default "
            f"topology: with amqp_results_topology 'celery4', Celery 4 clients read the "
            f"result queues and cannot decompress a state; unset one of the two")
    if conf.get("result_failure_expires") is not None:
        raise ValueError(
            "result_failure_expires needs the default topology: with "
            "amqp_results_topology 'celery4' a result queue expires as a whole "
            "(x-expires, as Celery 4 declares it), so a failure cannot expire at its "
            "own time; unset one of the two")
