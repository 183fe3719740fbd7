"""The ``tiercel`` command line: one click group, :data:`cli`, one command per module.

Every expected failure (bad setting, unreachable URL, port in use, unknown
task) is one line on stderr and exit status 2; no traceback. A command
returns its exit status; the group turns a :class:`TiercelError` into that one
line, so the same group also behaves when another click program (``celery``)
mounts it as a subcommand. :func:`main`, the console script, adds the one-line
form of click's own usage errors.

Each command module imports heavy things (Celery, rich, prometheus_client)
inside the command, so ``tiercel --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import IO, Any

import click

from tiercel.core.errors import SettingsError, TiercelError
from tiercel.core.settings import Settings, resolve_settings
from tiercel.workers import (
    bench,
    cache_admin,
    call,
    demo,
    exporter,
    flower_command,
    health,
    node,
    stats,
    up,
)

#: Exit status of every expected failure: a usage error, a bad setting, an unreachable server.
EXIT_USAGE = 2
#: Exit status after Ctrl-C outside a command's own signal handling (128 + SIGINT).
EXIT_INTERRUPTED = 130


class CommandError(click.ClickException):
    """An expected failure of a command: one line on stderr, exit status 2."""

    exit_code = EXIT_USAGE

    def show(self, file: IO[Any] | None = None) -> None:
        """Print ``tiercel: error: MESSAGE`` on stderr."""
        click.echo(f"tiercel: error: {self.format_message()}", file=file, err=True)


class TiercelGroup(click.Group):
    """A group that lists its commands in the order they were added and keeps the
    exit-status contract: a command's int return is the process's exit status."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Commands in the order they were added (the order of the guide), not sorted."""
        return list(self.commands)

    def invoke(self, ctx: click.Context) -> Any:
        """Run the subcommand; a TiercelError becomes one line and status 2."""
        try:
            status = super().invoke(ctx)
        except TiercelError as exc:
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("tiercel: interrupted", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        if isinstance(status, int) and status != 0:
            ctx.exit(status)
        return status


@click.group(
    "tiercel",
    cls=TiercelGroup,
    no_args_is_help=False,  # a missing command is a usage error (status 2), as it always was
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Settings come from TIERCEL_* environment variables (see `tiercel settings`). "
    "With no Redis URL set, `up` and `demo` start their own redis-server.",
)
def cli() -> None:
    """Cached compute on Celery: each distinct (function, version, arguments) computes
    once across the fleet."""


@click.command("settings", short_help="print the effective settings (secrets redacted)")
def show_settings() -> int:
    """Print every effective setting with its environment variable; secrets redacted:
    what the app configured, else ``TIERCEL_*`` variables and a fleet `tiercel up` runs."""
    try:
        settings = resolve_settings()
    except SettingsError:  # nothing configured yet: what the environment says
        settings = Settings.from_env()
    for name, value in settings.describe().items():
        click.echo(f"TIERCEL_{name.upper():<28} {value}")
    return 0


#: The commands that work with any app, so also under ``celery -A proj tiercel``; the
#: others run tiercel's own fleet (up, demo, worker, bench).
APP_COMMANDS: tuple[click.Command, ...] = (
    call.command,
    cache_admin.group,
    show_settings,
    health.command,
    stats.command,
    exporter.command,
    flower_command.command,
)

for _command in (up.command, demo.command, node.command, *APP_COMMANDS, bench.command):
    cli.add_command(_command)


def usage_line(error: click.UsageError) -> str:
    """Click's usage error as one line: ``tiercel up: error: ... (see 'tiercel up --help')``."""
    path = error.ctx.command_path if error.ctx is not None else "tiercel"
    message = " ".join(error.format_message().split()).rstrip(".")
    return f"{path}: error: {message} (see '{path} --help')"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tiercel`` console script: run :data:`cli`, return the exit status.

    A usage error (an unknown option, a value an option refuses) prints one line
    and raises SystemExit(2), before any command runs.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        status = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="tiercel",
            standalone_mode=False,
        )
    except click.UsageError as exc:
        click.echo(usage_line(exc), err=True)
        raise SystemExit(EXIT_USAGE) from None
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:  # Ctrl-C or end of input while click itself reads
        click.echo("tiercel: interrupted", err=True)
        return EXIT_INTERRUPTED
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
