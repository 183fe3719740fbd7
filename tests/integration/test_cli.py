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


# --- the click surface, in process ------------------------------------------------------

#: A value each command refuses at parse time: (argv, the option the one line names).
BAD_OPTION_VALUES = [
    (["up", "--workers", "0"], "--workers"),
    (["up", "--concurrency", "many"], "--concurrency"),
    (["up", "--flower-port", "70000"], "--flower-port"),
    (["up", "--pool", "gevent"], "--pool"),
    (["demo", "--requests", "none"], "--requests"),
    (["demo", "--compute-ms", "-5"], "--compute-ms"),
    (["worker", "--concurrency", "0"], "--concurrency"),
    (["call", "tiercel.tasks.examples.slow_square", "--timeout", "soon"], "--timeout"),
    (["call", "tiercel.tasks.examples.slow_square", "3", "--timout", "5"], "--timout"),
    (["health", "--timeout", "301"], "--timeout"),
    (["health", "--timeout", "never"], "--timeout"),
    (["health", "--liveness", "--readiness"], "--readiness"),
    (["stats", "--watch", "often"], "--watch"),
    (["stats", "--timeout", "soon"], "--timeout"),
    (["exporter", "--port", "0"], "--port"),
    (["exporter", "--port", "65536"], "--port"),
    (["bench", "--zipf", "steep"], "--zipf"),
    (["bench", "--pool", "gevent"], "--pool"),
    (["up", "--no-such-option"], "--no-such-option"),
    (["no-such-command"], "no-such-command"),
    ([], "Missing command"),
]


def _commands() -> list[str]:
    from tiercel.workers.cli import cli

    return list(cli.commands)


def test_the_group_lists_every_command_in_order_with_its_summary() -> None:
    from click.testing import CliRunner

    from tiercel.workers.cli import cli

    result = CliRunner().invoke(cli, ["--help"], prog_name="tiercel")
    assert result.exit_code == 0, result.output
    assert _commands() == [
        "up",
        "demo",
        "worker",
        "call",
        "cache",
        "settings",
        "health",
        "stats",
        "exporter",
        "flower",
        "bench",
    ]
    rows = result.stdout.split("Commands:\n")[1].splitlines()[: len(cli.commands)]
    listed = {row.split()[0]: row.split(None, 1)[1] for row in rows}
    assert list(listed) == _commands()
    for name, command in cli.commands.items():
        assert listed[name] == command.short_help, name  # one line each, not cut short
    assert "TIERCEL_*" in result.stdout  # where settings come from
    assert CliRunner().invoke(cli, ["-h"], prog_name="tiercel").stdout == result.stdout


@pytest.mark.parametrize("name", _commands())
def test_the_help_of_every_command_lists_its_options(name: str) -> None:
    import click
    from click.testing import CliRunner

    from tiercel.workers.cli import cli

    result = CliRunner().invoke(cli, [name, "--help"], prog_name="tiercel")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: tiercel {name} ")
    command = cli.commands[name]
    options = [p for p in command.params if isinstance(p, click.Option)]
    for option in options:
        assert option.help, f"tiercel {name} {option.opts[0]} has no help"
        for flag in option.opts:
            assert flag in result.stdout, (name, flag)
    body = result.stdout.split("Options:")[0].split("\n", 1)[1]  # the help text, not usage
    for argument in (p for p in command.params if isinstance(p, click.Argument)):
        word = (argument.metavar or argument.name or "").strip("[].").upper()
        assert word in body, f"tiercel {name}: the help does not say what {word} is"


@pytest.mark.parametrize(("argv", "named"), BAD_OPTION_VALUES)
def test_a_bad_option_value_is_one_line_and_status_2(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tiercel.workers.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tiercel") and ": error: " in lines[0], lines[0]
    assert named in lines[0]
    assert lines[0].endswith(" --help')")  # where to look next


def test_a_negative_number_is_a_json_argument_of_call() -> None:
    from tiercel.workers.cli import cli

    context = cli.commands["call"].make_context("call", ["some.task", "-3", "-0.5", "[1, -2]"])
    assert context.params["args"] == ("-3", "-0.5", "[1, -2]")


def test_help_imports_nothing_heavy(clean_env: dict[str, str]) -> None:
    """`tiercel --help` and each command's help stay fast: no Celery, Redis, rich, Prometheus."""
    heavy = ("celery", "kombu", "redis", "rich", "prometheus_client", "psycopg")
    script = (
        "import sys\n"
        "from tiercel.workers.cli import cli, main\n"
        "for argv in [['--help'], *([name, '--help'] for name in cli.commands)]:\n"
        "    assert main(argv) == 0, argv\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_the_group_keeps_its_exit_statuses_when_mounted_in_another_click_program() -> None:
    """`cli` can become a subcommand (of `celery`, say): statuses and error lines hold."""
    import click
    from click.testing import CliRunner

    from tiercel.workers.cli import cli

    @click.group()
    def outer() -> None:
        """Another program."""

    outer.add_command(cli)
    runner = CliRunner()
    listed = runner.invoke(outer, ["tiercel", "--help"], prog_name="outer")
    assert listed.exit_code == 0 and "Usage: outer tiercel " in listed.stdout
    bad = runner.invoke(outer, ["tiercel", "settings"], env={"TIERCEL_L1_MAX_ENTRIES": "lots"})
    assert bad.exit_code == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tiercel: error: "), bad.stderr
    assert "TIERCEL_L1_MAX_ENTRIES" in lines[0]
    shown = runner.invoke(outer, ["tiercel", "settings"])
    assert shown.exit_code == 0 and "TIERCEL_BROKER_URL" in shown.stdout


def test_a_command_status_and_an_interrupt_become_the_exit_status() -> None:
    from click.testing import CliRunner

    from tiercel.core.errors import ServerError
    from tiercel.workers.cli import EXIT_INTERRUPTED, EXIT_USAGE, TiercelGroup, main

    group = TiercelGroup("tiercel")

    @group.command()
    def unhealthy() -> int:
        return 1

    @group.command()
    def interrupted() -> int:
        raise KeyboardInterrupt

    @group.command()
    def unreachable() -> int:
        raise ServerError("redis at 127.0.0.1:1 is unreachable")

    runner = CliRunner()
    assert runner.invoke(group, ["unhealthy"]).exit_code == 1
    stopped = runner.invoke(group, ["interrupted"])
    assert stopped.exit_code == EXIT_INTERRUPTED == 130
    assert stopped.stderr == "tiercel: interrupted\n"
    failed = runner.invoke(group, ["unreachable"])
    assert failed.exit_code == EXIT_USAGE == 2
    assert failed.stderr == "tiercel: error: redis at 127.0.0.1:1 is unreachable\n"
    assert main(["settings"]) == 0  # the console script returns the status, not raises


def test_tiercel_flower_runs_flower_with_tiercels_configuration(clean_env: dict[str, str]) -> None:
    from tiercel.workers.flower_command import OWN_APP, flower_argv
    from tiercel.workers.launcher import flower_config_path

    argv = flower_argv(OWN_APP, ("--port=5556", "--address=127.0.0.1"))
    assert argv[1:7] == [
        "-m",
        "celery",
        "-A",
        "tiercel.workers.app",
        "flower",
        f"--conf={flower_config_path()}",
    ]
    assert argv[7:] == ["--port=5556", "--address=127.0.0.1"], "Flower's own options, in order"
    refused = run(["flower", "--conf=/tmp/other.py"], clean_env)
    assert refused.returncode == 2 and "--conf is tiercel's own" in refused.stderr
    assert "Traceback" not in refused.stderr
