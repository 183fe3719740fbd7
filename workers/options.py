"""Option types and options shared by the ``tiercel`` commands.

A value an option type refuses is a click usage error: the command line
reports it in one line and exits with status 2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

#: Celery execution pools a tiercel node may run.
POOLS = ("prefork", "solo", "threads")

F = TypeVar("F", bound=Callable[..., Any])


class PositiveInt(click.types.IntParamType):
    """A whole number, 1 or more."""

    name = "integer"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        """``value`` as an int, or a usage error naming the option."""
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value))
            except ValueError:
                self.fail(f"{value!r} is not a whole number", param, ctx)
        if number < 1:
            self.fail(f"{number} must be 1 or more", param, ctx)
        return number


class Port(PositiveInt):
    """A TCP port, 1 to 65535."""

    name = "port"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        """``value`` as a port number, or a usage error naming the option."""
        number = super().convert(value, param, ctx)
        if number > 65535:
            self.fail(f"{number} is not a TCP port (1-65535)", param, ctx)
        return number


def pool_option(text: str) -> Callable[[F], F]:
    """``--pool``: the Celery execution pool, prefork by default."""
    return click.option(
        "--pool", type=click.Choice(POOLS), default="prefork", show_choices=True, help=text
    )


def fleet_options(workers: int) -> Callable[[F], F]:
    """The options of a command that starts a local fleet: nodes, processes, pool, log level."""
    options = (
        click.option(
            "--workers",
            type=PositiveInt(),
            default=workers,
            metavar="N",
            help=f"worker nodes to start (default {workers})",
        ),
        click.option(
            "--concurrency",
            type=PositiveInt(),
            default=2,
            metavar="C",
            help="processes (prefork) or threads per node (default 2)",
        ),
        pool_option("Celery execution pool (default prefork)"),
        click.option(
            "--loglevel",
            default="WARNING",
            metavar="LEVEL",
            help="worker log level (default WARNING)",
        ),
    )

    def decorate(function: F) -> F:
        for option in reversed(options):  # click lists options in the order they are written
            function = option(function)
        return function

    return decorate
