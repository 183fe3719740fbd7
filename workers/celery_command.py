"""``celery -A proj tiercel ...``: tiercel's commands as a Celery subcommand.

Celery mounts :data:`tiercel` through its ``celery.commands`` entry point (see
``pyproject.toml``). The commands then work with the app ``-A`` named: its
broker, result backend and task modules, and the settings the project gave
``tiercel.init_app(app)``; no ``TIERCEL_*`` variable is needed. The commands
that run tiercel's own fleet (``up``, ``demo``, ``worker``, ``bench``) stay
with the ``tiercel`` console script: a project runs its own workers with
``celery -A proj worker``.
"""

from __future__ import annotations

import click

from tiercel.workers.cli import APP_COMMANDS, TiercelGroup
from tiercel.workers.command_app import use_app

__all__ = ["tiercel"]


@click.group(
    "tiercel",
    cls=TiercelGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Settings are the app's and those its tiercel.init_app(app) call gave; "
    "TIERCEL_* variables override them.",
)
@click.pass_context
def tiercel(ctx: click.Context) -> None:
    """tiercel's cache and fleet commands for the app given with -A."""
    cli_context = ctx.find_root().obj
    app = getattr(cli_context, "app", None)
    if app is None:
        raise click.UsageError("no app: run it as `celery -A proj tiercel ...`", ctx=ctx)
    use_app(app)


for _command in APP_COMMANDS:
    tiercel.add_command(_command)
