"""`tiercel health`: exit 0 or 1, one line, no secret, within its --timeout."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tiercel.core.embedded.redis_server import free_port
from tiercel.workers.launcher import Fleet

TIERCEL = [sys.executable, "-m", "tiercel.workers.cli", "health"]
SECRET = "s3cret-Pa55word-for-health"
#: Interpreter start-up and imports on a loaded 2-core machine, on top of --timeout.
STARTUP_ALLOWANCE = 8.0


def health(
    *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [*TIERCEL, *args],
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, time.monotonic() - started


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def assert_healthy(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return one_line(result.stdout)


def assert_unhealthy(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result
    assert result.stdout == ""
    line = one_line(result.stderr)
    assert line.startswith("tiercel health: FAIL")
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr
    return line


@pytest.fixture()
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers (a hung server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_liveness_is_the_default_and_checks_the_broker() -> None:
    line = assert_healthy(health()[0])
    assert line == "tiercel health: ok (liveness): broker"


def test_readiness_checks_broker_and_cache(fleet: Fleet) -> None:
    line = assert_healthy(health("--readiness")[0])
    assert line.startswith("tiercel health: ok (readiness): broker")
    assert "cache" in line


def test_node_ping_with_the_same_pattern_as_the_worker(fleet: Fleet) -> None:
    node = fleet.node_names[0]
    line = assert_healthy(health("--readiness", "--node", node)[0])
    assert f"node {node}" in line
    # %h expands as in `celery worker -n`: the pattern the worker was started with matches.
    pattern = node.split("@", 1)[0] + "@%h"
    assert f"node {node}" in assert_healthy(health("--node", pattern)[0])


def test_a_silent_node_fails_within_the_timeout(fleet: Fleet) -> None:
    result, took = health("--node", "nobody-here@%h", "--timeout", "2")
    line = assert_unhealthy(result)
    assert "nobody-here@" in line and "did not answer" in line
    assert took < 2 + STARTUP_ALLOWANCE


def test_hung_cache_fails_readiness_in_bounded_time_without_leaking_the_password(
    silent_port: int,
) -> None:
    env = {**os.environ, "TIERCEL_CACHE_URL": f"redis://:{SECRET}@127.0.0.1:{silent_port}/0"}
    result, took = health("--readiness", "--timeout", "2", env=env)
    line = assert_unhealthy(result)
    assert "cache" in line and "***" in line and "(passed: broker)" in line
    assert took < 2 + STARTUP_ALLOWANCE
    # Liveness leaves the cache tier out: a worker keeps computing without it.
    assert_healthy(health("--liveness", "--timeout", "2", env=env)[0])


def test_unreachable_broker_fails_liveness() -> None:
    url = f"redis://:{SECRET}@127.0.0.1:{free_port()}/0"
    env = {**os.environ, "TIERCEL_BROKER_URL": url, "TIERCEL_RESULT_BACKEND": url}
    line = assert_unhealthy(health(env=env)[0])
    assert "broker" in line and "unreachable" in line


def test_nothing_configured_is_unhealthy_not_a_crash(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERCEL_")}
    env["TIERCEL_RUN_DIR"] = str(tmp_path)
    line = assert_unhealthy(health(env=env)[0])
    assert "TIERCEL_BROKER_URL" in line


def test_bad_options_are_usage_errors() -> None:
    result, _ = health("--timeout", "0")
    assert result.returncode == 2
    result, _ = health("--liveness", "--readiness")
    assert result.returncode == 2
