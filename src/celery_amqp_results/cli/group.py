"""The ``amqp-results`` click group and its subcommands.

This module is imported by every ``celery`` invocation (worker included) through
the entry point, so it and the subcommand modules import nothing heavy at the
top: rich is imported only when ``watch`` draws a bar.
"""
from __future__ import annotations

from typing import Any

import click

from .doctor import doctor
from .forget import forget
from .peek import peek
from .purge import purge
from .watch import watch


@click.group(name="amqp-results")
@click.pass_context
def amqp_results(ctx: click.Context, **preload_options: Any) -> None:
    """Look at, wait for and clean up results kept by celery-amqp-results.

    Runs with the app given to celery -A; its result_backend must be an amqp:// URL.
    """
    # Older Celery passes the app's preload options to every command; they are
    # for the app, not for us, and Celery has already applied them.


for command in (peek, watch, forget, purge, doctor):
    amqp_results.add_command(command)
