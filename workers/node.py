"""``tiercel worker``: one more worker node joining a running fleet."""

from __future__ import annotations

import os
import sys

import click

from tiercel.core.settings import resolve_settings
from tiercel.workers.options import PositiveInt, pool_option


@click.command("worker", short_help="start one worker node that joins a running fleet")
@click.option(
    "--concurrency",
    type=PositiveInt(),
    default=2,
    metavar="C",
    help="processes (prefork) or threads of the node (default 2)",
)
@pool_option("Celery execution pool (default prefork)")
@click.option("--name", default=None, metavar="NAME", help="node name (default tiercel-PID@HOST)")
@click.option("--loglevel", default="INFO", metavar="LEVEL", help="worker log level (default INFO)")
def command(concurrency: int, pool: str, name: str | None, loglevel: str) -> int:
    """Run `celery -A tiercel.workers.app worker` with the fleet's URLs (from
    TIERCEL_* or a running `tiercel up`). This process becomes the worker."""
    from tiercel.workers.launcher import check_reachable

    settings = resolve_settings()
    for role, url in (("broker", settings.broker_url), ("cache", settings.cache_url)):
        if url:
            check_reachable(role, url)
    node = name or f"tiercel-{os.getpid()}@%h"
    env = dict(os.environ)
    env.update(
        {
            "TIERCEL_BROKER_URL": settings.broker_url or "",
            "TIERCEL_RESULT_BACKEND": settings.result_backend or "",
            "TIERCEL_CACHE_URL": settings.cache_url or "",
        }
    )
    if settings.task_modules:  # the running fleet's, from its fleet file
        env["TIERCEL_TASK_MODULES"] = ",".join(settings.task_modules)
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tiercel.workers.app",
        "worker",
        "-n",
        node,
        "-P",
        pool,
        "-c",
        str(concurrency),
        "-l",
        loglevel,
        "-E",
    ]
    os.execve(sys.executable, argv, env)  # noqa: S606 - argv is ours, no shell
    return 0  # pragma: no cover - execve does not return
