"""celery-amqp-results: the AMQP result backend for Celery 5.

Set ``result_backend = "amqp://user:password@host:5672/vhost"`` and every task
state is kept in RabbitMQ, readable by any process, any number of times.
"""
from ._version import __version__
from .backend import AMQPBackend
from .errors import (
    BacklogLimitExceeded,
    InvalidResultError,
    InvalidTaskIdError,
    ResultBrokerError,
    ResultStoreError,
    ResultTooLargeError,
    UnsafeResultError,
)

__all__ = [
    "AMQPBackend",
    "BacklogLimitExceeded",
    "InvalidResultError",
    "InvalidTaskIdError",
    "ResultBrokerError",
    "ResultStoreError",
    "ResultTooLargeError",
    "UnsafeResultError",
    "__version__",
]
