"""Scaling out a running fleet, and a node leaving it without losing a task.

`tiercel up` runs on the embedded default (no TIERCEL_* URL, a private run
directory); `tiercel worker` in another process finds it through the fleet
file and joins without restarting anything. Then the joined node gets SIGTERM
while it runs long tasks: Celery's warm shutdown finishes what is running,
acks_late leaves everything else in the queue for the other node, and every
submitted task's result arrives, each computed exactly once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from tests.integration.fleet import wait_for_up
from tiercel.core.embedded.fleet_file import read_fleet_file
from tiercel.core.settings import Settings
from tiercel.workers.control import control_app, ping_nodes


@contextlib.contextmanager
def _embedded_up(env: dict[str, str]) -> Iterator[tuple[Settings, str]]:
    """`tiercel up --workers 1` on the embedded Redis; yields its settings and node."""
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tiercel.workers.cli",
            "up",
            "--workers",
            "1",
            "--concurrency",
            "2",
            "--no-flower",
            "--no-beat",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        nodes = wait_for_up(up)
        assert len(nodes) == 1, nodes
        record = _fleet_record(env)
        yield (
            Settings(
                broker_url=record["broker_url"],
                result_backend=record["result_backend"],
                cache_url=record["cache_url"],
            ),
            nodes[0],
        )
    finally:
        up.send_signal(signal.SIGINT)
        up.wait(60)
        if up.stdout is not None:
            up.stdout.close()
    assert up.returncode == 0


def _fleet_record(env: dict[str, str]) -> dict[str, Any]:
    saved = os.environ.get("TIERCEL_RUN_DIR")
    os.environ["TIERCEL_RUN_DIR"] = env["TIERCEL_RUN_DIR"]
    try:
        record = read_fleet_file()
    finally:
        if saved is not None:
            os.environ["TIERCEL_RUN_DIR"] = saved
    assert record is not None, "tiercel up wrote no fleet file"
    return record


def _wait_for_pings(settings: Settings, nodes: list[str], joined: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    missing = set(nodes)
    while missing:
        assert joined.poll() is None, f"tiercel worker exited with code {joined.returncode}"
        assert time.monotonic() < deadline, f"no ping from {sorted(missing)}"
        missing -= ping_nodes(settings, sorted(missing), timeout=1.0)


def _active_on(app: Any, node: str) -> int:
    replies = app.control.inspect(destination=[node], timeout=1.0).active() or {}
    return len(replies.get(node) or [])


def test_a_joined_node_takes_tasks_and_leaves_without_losing_any(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERCEL_")}
    env["TIERCEL_RUN_DIR"] = str(tmp_path / "run")
    with _embedded_up(env) as (settings, first_node):
        joined_node = f"joined-{uuid.uuid4().hex[:6]}@{first_node.split('@', 1)[1]}"
        # The joining node gets no URL: it reads the running fleet's file.
        joined = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tiercel.workers.cli",
                "worker",
                "--name",
                joined_node,
                "--concurrency",
                "2",
                "--loglevel",
                "WARNING",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        app = control_app(settings)
        cache = redis.Redis.from_url(settings.cache_url or "")
        broker = redis.Redis.from_url(settings.broker_url or "")
        try:
            _wait_for_pings(settings, [first_node, joined_node], joined)

            # Both nodes take tasks from the one queue.
            counter = f"test:scale:{uuid.uuid4().hex}"
            seen: set[str] = set()
            base = uuid.uuid4().int % 10**9
            for batch in range(5):
                numbers = [base + batch * 10 + i for i in range(8)]
                results = [
                    app.send_task("tiercel.tasks.examples.counted_square", (n, counter, 200))
                    for n in numbers
                ]
                assert [r.get(timeout=30) for r in results] == [n * n for n in numbers]
                seen.update(r.worker for r in results)
                if seen == {first_node, joined_node}:
                    break
            assert seen == {first_node, joined_node}

            # The joined node leaves (SIGTERM) while it runs two 2-second tasks.
            slow_counter = f"test:scale:slow:{uuid.uuid4().hex}"
            numbers = [base + 1000 + i for i in range(6)]
            results = [
                app.send_task("tiercel.tasks.examples.counted_square", (n, slow_counter, 2000))
                for n in numbers
            ]
            deadline = time.monotonic() + 20
            while _active_on(app, joined_node) < 2:
                assert time.monotonic() < deadline, "the joined node never ran two tasks"
            os.kill(joined.pid, signal.SIGTERM)  # Celery's warm shutdown
            left_at = time.monotonic()

            assert [r.get(timeout=60) for r in results] == [n * n for n in numbers]
            assert joined.wait(30) == 0, "the joined node did not shut down cleanly"
            workers = [r.worker for r in results]
            # Warm shutdown finished the two tasks it was running instead of dropping them...
            assert workers.count(joined_node) == 2, workers
            # ...and every other task ran on the node that stayed.
            assert workers.count(first_node) == 4, workers
            # Nothing computed twice, nothing left unacknowledged or queued.
            assert int(cache.get(slow_counter) or 0) == len(numbers)
            # A task is acknowledged just after its result is stored: let the last ack land.
            acked_by = time.monotonic() + 10
            while broker.hlen("unacked") and time.monotonic() < acked_by:
                time.sleep(0.05)
            assert broker.hlen("unacked") == 0
            assert broker.llen("celery") == 0
            assert time.monotonic() - left_at < 30
        finally:
            if joined.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(joined.pid, signal.SIGKILL)
                joined.wait(10)
            app.close()
            cache.close()
            broker.close()
