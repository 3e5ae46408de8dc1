"""celery-amqp-results: the AMQP result backend for Celery 5.

Set ``result_backend = "amqp://user:password@host:5672/vhost"`` and every task
state is kept in RabbitMQ, readable by any process, any number of times.
"""
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

__version__ = "0.1.0"

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
