"""Every command line in deploy/ runs here, against the session's test Redis servers.

The command lines come from the files themselves (tests/deploy parses them); only
what must differ on a test machine is substituted: the Redis URLs (the session's
servers; broker and results on a database of their own so the deploy processes
never meet the session fleet), listening ports (free loopback ports), 0.0.0.0
(127.0.0.1), the bare-host install path (this virtualenv) and /var/lib/tiercel
(a temporary folder). Long-running commands must become ready (a worker answers
a ping, Flower and the exporter answer HTTP, beat stays up and writes its
schedule) and stop on SIGTERM to their process group; the checks declared beside
them (compose health checks, Kubernetes probes) must pass while they run.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from tests.deploy.commands import (
    HOST_VENV_BIN,
    DeployCommand,
    HttpProbe,
    Unit,
    all_units,
)
from tiercel.core.embedded.redis_server import find_redis_server, free_port
from tiercel.core.settings import Settings

VENV_BIN = str(Path(sys.executable).parent)
#: Database of the session broker server that the deploy processes use.
DEPLOY_DB = 7
READY_TIMEOUT = 45.0
STOP_TIMEOUT = 20.0
#: Commands a deployment runs that are not ours (the Redis image's own client).
EXTERNAL_PROGRAMS = {"redis-cli"}


@dataclass
class Service:
    """A long-running command shared by one or more files, with every check declared beside it."""

    main: DeployCommand
    sources: list[str] = field(default_factory=list)
    checks: list[DeployCommand] = field(default_factory=list)
    http_probes: list[HttpProbe] = field(default_factory=list)


def _services() -> list[Service]:
    merged: dict[tuple[tuple[str, ...], bool], Service] = {}
    for unit in all_units():
        if unit.main is None or unit.main.role == "redis-server":
            continue
        key = (unit.main.argv, unit.main.shell)
        service = merged.setdefault(key, Service(unit.main))
        service.sources.append(unit.source)
        for check in unit.checks:
            if check.argv not in {c.argv for c in service.checks}:
                service.checks.append(check)
        service.http_probes.extend(unit.http_probes)
    return list(merged.values())


SERVICES = _services()
REDIS_UNITS = [u for u in all_units() if u.main is not None and u.main.role == "redis-server"]


def _test_urls() -> dict[str, str]:
    broker = urlsplit(os.environ["TIERCEL_BROKER_URL"])
    own_db = urlunsplit((broker.scheme, broker.netloc, f"/{DEPLOY_DB}", "", ""))
    return {
        "TIERCEL_BROKER_URL": own_db,
        "TIERCEL_RESULT_BACKEND": own_db,
        "TIERCEL_CACHE_URL": os.environ["TIERCEL_CACHE_URL"],
    }


def _test_settings() -> Settings:
    urls = _test_urls()
    return Settings(
        broker_url=urls["TIERCEL_BROKER_URL"],
        result_backend=urls["TIERCEL_RESULT_BACKEND"],
        cache_url=urls["TIERCEL_CACHE_URL"],
    )


@dataclass
class Localizer:
    """The substitutions that turn a deployment's command line into one that runs here."""

    tmp: Path
    deploy_port: str | None = None
    port: int | None = None

    def text(self, word: str) -> str:
        """One word (or a whole shell line) with every substitution applied."""
        word = word.replace(HOST_VENV_BIN, VENV_BIN + "/")
        word = word.replace("0.0.0.0", "127.0.0.1")
        word = word.replace("/var/lib/tiercel", str(self.tmp))
        if self.deploy_port is not None:
            word = re.sub(rf"(?<!\d){self.deploy_port}(?!\d)", str(self.port), word)
        return word

    def argv(self, command: DeployCommand) -> list[str]:
        """The command's argv here; its program must be one this project installs."""
        argv = [self.text(word) for word in command.argv]
        program = command.words[0]
        if "/" in program:
            program = self.text(program)
            assert os.access(program, os.X_OK), f"{command.source}: {program} is not installed"
        else:
            assert shutil.which(program, path=VENV_BIN), (
                f"{command.source}: {program} is not a program of this project's environment"
            )
        return argv

    def env(self, command: DeployCommand) -> dict[str, str]:
        """The file's environment with the session's URLs and this virtualenv on PATH."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TIERCEL_", "FLOWER_"))}
        env.update(command.env)
        env.update(_test_urls())
        env["TIERCEL_RUN_DIR"] = os.environ["TIERCEL_RUN_DIR"]
        env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
        return env


@contextlib.contextmanager
def _running(command: DeployCommand, local: Localizer) -> Iterator[subprocess.Popen[bytes]]:
    log = (local.tmp / "output.log").open("wb")
    process = subprocess.Popen(
        local.argv(command),
        env=local.env(command),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=local.tmp,
        start_new_session=True,
    )
    try:
        yield process
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{command.source}: did not stop within {STOP_TIMEOUT:g}s of SIGTERM")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
        log.close()


def _output(local: Localizer) -> str:
    return (local.tmp / "output.log").read_text(errors="replace")[-3000:]


def _assert_alive(process: subprocess.Popen[bytes], source: str, local: Localizer) -> None:
    if process.poll() is not None:
        pytest.fail(
            f"{source}: exited with code {process.returncode} while starting:\n{_output(local)}"
        )


def _http(url: str, auth: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _wait_http(url: str, process: subprocess.Popen[bytes], source: str, local: Localizer) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        _assert_alive(process, source, local)
        try:
            _http(url)
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{source}: nothing answered {url} within {READY_TIMEOUT:g}s:\n{_output(local)}"
                )
            time.sleep(0.2)


def _wait_worker(command: DeployCommand, process: subprocess.Popen[bytes], local: Localizer) -> str:
    from celery.utils.nodenames import host_format

    from tiercel.workers.control import ping_nodes

    pattern = command.option("--hostname") or command.option("-n")
    assert pattern, f"{command.source}: the worker needs an explicit node name"
    # In a Procfile line `exec` keeps the shell's PID, so $$ is the worker's own PID.
    node = host_format(pattern.replace("$$", str(process.pid)))
    deadline = time.monotonic() + READY_TIMEOUT
    while not ping_nodes(_test_settings(), [node], timeout=1.0):
        _assert_alive(process, command.source, local)
        if time.monotonic() > deadline:
            pytest.fail(
                f"{command.source}: node {node} did not answer a ping within "
                f"{READY_TIMEOUT:g}s:\n{_output(local)}"
            )
    return str(node)


def _run_check(check: DeployCommand, local: Localizer) -> None:
    if check.program in EXTERNAL_PROGRAMS:
        return  # the Redis image's client; the server side is tested in test_redis_commands
    assert check.role in ("health", "http-check"), f"{check.source}: unexpected {check.words}"
    started = time.monotonic()
    result = subprocess.run(
        local.argv(check),
        env=local.env(check),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=local.tmp,
    )
    took = time.monotonic() - started
    assert result.returncode == 0, f"{check.source}: exit {result.returncode}: {result.stderr}"
    if check.role == "health":
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tiercel health: ok"), result.stdout
        timeout = float(check.option("--timeout") or 5)
        # The probe's own bound plus interpreter start-up on a loaded machine.
        assert took < timeout + 10, f"{check.source}: took {took:.1f}s"


def _exporter_available() -> None:
    result = subprocess.run(
        [os.path.join(VENV_BIN, "tiercel"), "exporter", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (
        "`tiercel exporter` is not available (workers/exporter.py), but deploy/ runs it: "
        + (result.stderr.strip().splitlines() or ["no output"])[-1]
    )


@pytest.mark.integration
@pytest.mark.parametrize(
    "service", SERVICES, ids=[f"{s.main.role}:{'+'.join(s.sources)}" for s in SERVICES]
)
def test_service_starts_answers_and_stops(service: Service, tmp_path: Path) -> None:
    main = service.main
    role = main.role
    if role == "exporter":
        _exporter_available()
    deploy_port = main.option("--port")
    local = Localizer(tmp_path, deploy_port, free_port() if deploy_port else None)
    with _running(main, local) as process:
        if role == "worker":
            _wait_worker(main, process, local)
        elif role == "flower":
            base = f"http://127.0.0.1:{local.port}"
            _wait_http(base + "/healthcheck", process, main.source, local)
            # Authentication is on: nothing without the credentials, everything with them.
            assert _http(base + "/") == 401
            assert _http(base + "/api/workers") == 401
            credentials = local.env(main)["FLOWER_BASIC_AUTH"].split(",")[0]
            assert _http(base + "/", auth=credentials) == 200
        elif role == "exporter":
            url = f"http://127.0.0.1:{local.port}/metrics"
            _wait_http(url, process, main.source, local)
            assert _http(url) == 200
        elif role == "beat":
            deadline = time.monotonic() + READY_TIMEOUT
            while not list(tmp_path.glob("celerybeat-schedule*")):
                _assert_alive(process, main.source, local)
                assert time.monotonic() < deadline, f"no schedule written:\n{_output(local)}"
                time.sleep(0.1)
            time.sleep(2.0)  # and it stays up
            _assert_alive(process, main.source, local)
        else:
            pytest.fail(f"{main.source}: no readiness rule for {role!r}")
        for check in service.checks:
            _run_check(check, local)
        for probe in service.http_probes:
            assert str(probe.port) == deploy_port, f"{probe.source}: probes another port"
            status = _http(f"http://127.0.0.1:{local.port}{probe.path}")
            assert status == 200, f"{probe.source}: {probe.path} answered {status}"
        _assert_alive(process, main.source, local)
    assert "Traceback" not in _output(local), _output(local)


def _redis_local_argv(command: DeployCommand, port: int, tmp: Path) -> list[str]:
    # The server flags as written, then where to listen and write here (later flags win).
    return [
        find_redis_server(),
        *command.words[1:],
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(tmp),
        "--daemonize",
        "no",
    ]


@pytest.mark.integration
@pytest.mark.parametrize("unit", REDIS_UNITS, ids=[u.source for u in REDIS_UNITS])
def test_redis_commands_start_with_their_policy(unit: Unit, tmp_path: Path) -> None:
    assert unit.main is not None
    command = unit.main
    port = free_port()
    password = command.option("--requirepass")
    process = subprocess.Popen(
        _redis_local_argv(command, port, tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
        start_new_session=True,
    )
    client = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=2)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert process.poll() is None, f"{unit.source}: redis-server refused the flags"
                assert time.monotonic() < deadline
                time.sleep(0.05)
        policy = client.config_get("maxmemory-policy")["maxmemory-policy"]
        assert policy == command.option("--maxmemory-policy")
        if policy == "allkeys-lru":
            assert int(str(client.config_get("maxmemory")["maxmemory"])) > 0
    finally:
        client.close()
        process.terminate()
        process.wait(10)


def test_every_command_line_is_covered() -> None:
    """Every command a deploy file runs is exercised by one of the tests above."""
    ran = {s.main.argv for s in SERVICES} | {u.main.argv for u in REDIS_UNITS if u.main}
    checked = {c.argv for s in SERVICES for c in s.checks}
    for unit in all_units():
        assert unit.main is not None, f"{unit.source}: no command"
        assert unit.main.argv in ran
        for check in unit.checks:
            if check.program in EXTERNAL_PROGRAMS:
                continue  # the Redis image's own client, beside the servers tested above
            assert check.argv in checked, f"{check.source}: not run by any test"
