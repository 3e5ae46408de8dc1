"""``celery amqp-results``: look at, wait for and clean up results kept in RabbitMQ.

Celery 5 adds the click commands of the ``celery.commands`` entry-point group to
its ``celery`` program, so ``celery -A proj amqp-results peek ID`` runs with the
app given by ``-A``.  docs/cli.md describes every subcommand.
"""
from .group import amqp_results

__all__ = ["amqp_results"]
