"""``tiercel call``: submit one cached task by name and print its result."""

from __future__ import annotations

import json

import click

from tiercel.core.errors import SettingsError
from tiercel.core.settings import resolve_settings
from tiercel.workers.command_app import command_app


@click.command(
    "call",
    short_help="submit one cached task and print its result",
    # A negative number is a JSON argument, not an option: `tiercel call TASK -3`.
    context_settings={"ignore_unknown_options": True},
)
@click.argument("task")
@click.argument("args", nargs=-1, metavar="[JSON_ARG]...")
@click.option(
    "--timeout",
    type=float,
    default=60.0,
    metavar="SECONDS",
    help="seconds to wait for the result (default 60)",
)
@click.pass_context
def command(ctx: click.Context, task: str, args: tuple[str, ...], timeout: float) -> int:
    """Submit TASK, a registered task name such as tiercel.tasks.examples.slow_square,
    with each JSON_ARG as a positional argument, and print the result and where it
    came from as one JSON object."""
    from tiercel.tasks.registry import find_cached_task

    for word in (task, *args):
        if word.startswith("--"):  # no JSON value starts with "--": a mistyped option
            raise click.NoSuchOption(word.split("=", 1)[0], ctx=ctx)
    resolve_settings()  # fail early, one line, when nothing is configured
    command_app()  # the configured app: broker and result backend

    cached_task = find_cached_task(task)
    try:
        call_args = [json.loads(arg) for arg in args]
    except ValueError as exc:
        raise SettingsError(f"arguments must be JSON values: {exc}") from None
    result = cached_task.submit(*call_args)
    value = result.get(timeout=timeout)
    print(json.dumps({"source": result.source, "task_id": result.task_id, "result": value}))
    return 0
