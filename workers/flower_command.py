"""``tiercel flower [FLOWER_OPTION ...]``: Flower for the fleet, with tiercel's view.

Runs ``celery -A APP flower --conf=<tiercel's Flower configuration> FLOWER_OPTION
...`` in place of this process (``exec``: Flower gets the signals a service
manager sends), so a cached task's page shows which tier answered, the seconds
saved and the key, and ``/metrics`` counts the hits clients answered without a
task (:mod:`tiercel.workers.flower_view`). APP is tiercel's own app, or under
``celery -A proj tiercel flower`` the project's. Every option is Flower's own
(``--port``, ``--address``, ``--basic-auth`` or ``FLOWER_BASIC_AUTH`` ...).
"""

from __future__ import annotations

import os
import sys

import click

#: The app Flower loads under the ``tiercel`` console script.
OWN_APP = "tiercel.workers.app"


def flower_argv(app: str, flower_options: tuple[str, ...]) -> list[str]:
    """The command line that runs Flower for ``app`` with tiercel's configuration file."""
    from tiercel.workers.launcher import flower_config_path

    given = [option for option in flower_options if option.split("=", 1)[0] == "--conf"]
    if given:
        raise click.UsageError(
            "--conf is tiercel's own Flower configuration here; "
            "run `celery -A APP flower --conf=...` to use another"
        )
    return [
        sys.executable,
        *("-m", "celery", "-A", app, "flower"),
        f"--conf={flower_config_path()}",
        *flower_options,
    ]


def _app_name(ctx: click.Context) -> str:
    """``-A``'s value under ``celery -A proj tiercel flower``, else tiercel's own app."""
    root = ctx.find_root()
    if root.info_name == "celery":
        app = root.params.get("app")
        if app:
            return str(app)
    return OWN_APP


@click.command(
    "flower",
    short_help="run Flower showing tiercel's tier, saved seconds and key per task",
    help="Run Flower (celery -A APP flower FLOWER_OPTION...) with tiercel's configuration "
    "file, so a cached task's page shows which tier answered, the seconds saved and the key, "
    "and /metrics counts the hits clients answered without a task. APP is tiercel's own app, "
    "or the project's under `celery -A proj tiercel flower`. Every option is Flower's own "
    "(--port, --address, --basic-auth or FLOWER_BASIC_AUTH, ...). Flower replaces this "
    "process, so it gets the signals a service manager sends.",
    context_settings={"ignore_unknown_options": True, "help_option_names": ["-h", "--help"]},
)
@click.argument("flower_options", nargs=-1, type=click.UNPROCESSED, metavar="[FLOWER_OPTION]...")
@click.pass_context
def command(ctx: click.Context, flower_options: tuple[str, ...]) -> int:
    argv = flower_argv(_app_name(ctx), flower_options)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)  # noqa: S606 (our own argv: this interpreter running celery)
    return 0  # pragma: no cover - execv does not return
