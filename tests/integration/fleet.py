"""Real worker nodes for integration tests: `celery worker` subprocesses.

Readiness is a ping from every node plus one task round trip; teardown
SIGTERMs each node's process group and SIGKILLs what remains.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from tiercel.core.settings import resolve_settings
from tiercel.workers.control import control_app
from tiercel.workers.launcher import Fleet, FleetSpec


@contextlib.contextmanager
def worker_fleet(
    nodes: int = 2, concurrency: int = 2, pool: str = "prefork", grace: float = 15.0
) -> Iterator[Fleet]:
    """Run ``nodes`` worker nodes against the session's servers."""
    import tiercel.workers.app  # noqa: F401  (this client publishes through the configured app)

    spec = FleetSpec(
        workers=nodes,
        concurrency=concurrency,
        pool=pool,
        beat=False,
        flower=False,
        loglevel="WARNING",
        grace=grace,
        quiet=False,
    )
    fleet = Fleet(resolve_settings(), spec)
    with fleet.running():
        # One full round trip through the fleet's own broker and backend (this process's
        # Celery app may be configured for other servers).
        control = control_app(fleet.settings)
        try:
            control.send_task("tiercel.tasks.examples.noop").get(timeout=60)
        finally:
            control.close()
        yield fleet


def wait_for_up(up: subprocess.Popen[str], timeout: float = 90.0) -> list[str]:
    """Read a running `tiercel up`'s output until it says it is up; return its node names."""
    import time

    assert up.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = up.stdout.readline()
        assert line, f"tiercel up exited early: {lines}"
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            break
    return [line.split()[1] for line in lines if line.strip().startswith("worker ")]


@contextlib.contextmanager
def celery_workers(
    app: str,
    nodes: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    concurrency: int = 2,
    extra: Sequence[str] = (),
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``celery -A app worker`` nodes named ``nodes`` (2 prefork processes each), run as a
    project runs its own; SIGTERM on exit, SIGKILL what is still there after 20 s."""
    workers = [
        subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", app, "worker"),
                *("-n", node, "-P", "prefork", "-c", str(concurrency)),
                *("--without-mingle", "--without-gossip", "-l", "WARNING", *extra),
            ],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for node in nodes
    ]
    try:
        yield workers
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
