"""The `tiercel` command line: bad input is one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TIERCEL = [sys.executable, "-m", "tiercel.workers.cli"]


def run(
    args: list[str], env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TIERCEL, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture()
def clean_env(tmp_path: Path) -> dict[str, str]:
    """An environment with no TIERCEL_* URL and a private run directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERCEL_")}
    env["TIERCEL_RUN_DIR"] = str(tmp_path / "run")
    return env


@pytest.fixture()
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tiercel: error: ")
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in lines[0]


def test_help_lists_every_command(clean_env: dict[str, str]) -> None:
    result = run(["--help"], clean_env)
    assert result.returncode == 0
    for command in ("up", "demo", "worker", "call", "settings"):
        assert command in result.stdout
    up_help = run(["up", "--help"], clean_env)
    assert "--workers" in up_help.stdout and "--no-flower" in up_help.stdout


def test_unknown_task_name(clean_env: dict[str, str]) -> None:
    env = {**os.environ, "TIERCEL_RUN_DIR": clean_env["TIERCEL_RUN_DIR"]}
    result = run(["call", "tiercel.tasks.examples.does_not_exist", "1"], env)
    assert_one_line_error(result, "unknown cached task", "tiercel.tasks.examples.slow_square")


def test_unreachable_redis_url(clean_env: dict[str, str]) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"redis://user:hunter2hunter2@127.0.0.1:{port}/0"
    env = {**clean_env, "TIERCEL_BROKER_URL": url}
    result = run(["up", "--no-flower", "--no-beat"], env)
    assert_one_line_error(result, f"127.0.0.1:{port}", "unreachable")
    assert "hunter2" not in result.stderr, "a password must never be printed"


def test_port_in_use(clean_env: dict[str, str], busy_port: int) -> None:
    result = run(["up", "--flower-port", str(busy_port)], clean_env)
    assert_one_line_error(result, str(busy_port), "already in use")


def test_malformed_setting(clean_env: dict[str, str]) -> None:
    env = {**clean_env, "TIERCEL_L1_MAX_ENTRIES": "lots"}
    result = run(["up"], env)
    assert_one_line_error(result, "TIERCEL_L1_MAX_ENTRIES")


def test_malformed_option_is_a_one_line_usage_error(clean_env: dict[str, str]) -> None:
    result = run(["up", "--workers", "zero"], clean_env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--workers" in result.stderr
    assert result.stderr.strip().splitlines() == [
        "tiercel up: error: Invalid value for '--workers': 'zero' is not a whole number "
        "(see 'tiercel up --help')"
    ]


def test_call_submits_and_reports_the_source(fleet: object) -> None:
    import json
    import uuid

    n = str(uuid.uuid4().int % 10**9)
    result = run(["call", "tiercel.tasks.examples.slow_square", n], dict(os.environ))
    assert result.returncode == 0, result.stderr
    first = json.loads(result.stdout)
    assert first["result"] == int(n) ** 2 and first["source"] == "computed"
    again = json.loads(
        run(["call", "tiercel.tasks.examples.slow_square", n], dict(os.environ)).stdout
    )
    assert again["source"] == "redis" and again["task_id"] is None

