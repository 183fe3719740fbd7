"""The ``tiercel`` command line.

Every expected failure (bad setting, unreachable URL, port in use, unknown
task) is one line on stderr and exit status 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from tiercel.core.errors import SettingsError, TiercelError
from tiercel.core.settings import Settings, resolve_settings

EXIT_USAGE = 2

#: Commands that live in their own module: ``configure(parser)`` adds the options,
#: ``run(args) -> int`` runs it. Each module imports heavy things lazily.
PLUGGED_COMMANDS = (
    ("health", "tiercel.workers.health", "exit 0 when this node's fleet is healthy, else 1"),
    ("stats", "tiercel.workers.stats", "the fleet's aggregated metrics as a table"),
    ("exporter", "tiercel.workers.exporter", "serve the fleet's metrics to Prometheus"),
    ("bench", "tiercel.workers.bench", "model your own workload against plain Celery"),
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a TCP port (1-65535)")
    return value


def _add_fleet_options(parser: argparse.ArgumentParser, workers: int) -> None:
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=workers,
        metavar="N",
        help=f"worker nodes to start (default {workers})",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=2,
        metavar="C",
        help="processes (prefork) or threads per node (default 2)",
    )
    parser.add_argument(
        "--pool",
        choices=("prefork", "solo", "threads"),
        default="prefork",
        help="Celery execution pool (default prefork)",
    )
    parser.add_argument("--loglevel", default="WARNING", help="worker log level (default WARNING)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="tiercel",
        description="Cached compute on Celery: each distinct (function, version, arguments) "
        "computes once across the fleet.",
        epilog="Settings come from TIERCEL_* environment variables (see `tiercel settings`). "
        "With no Redis URL set, `up` and `demo` start their own redis-server.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up",
        help="start Redis (if needed), workers, beat and Flower",
        description="Start the embedded Redis servers when no URL is "
        "configured, N worker nodes, one beat and Flower; "
        "Ctrl-C or SIGTERM stops everything gracefully.",
    )
    _add_fleet_options(up, workers=1)
    up.add_argument("--no-flower", action="store_true", help="do not start Flower")
    up.add_argument("--no-beat", action="store_true", help="do not start beat")
    up.add_argument(
        "--flower-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="Flower's port on 127.0.0.1 (default TIERCEL_FLOWER_PORT or 5555)",
    )
    up.set_defaults(handler=cmd_up)

    demo = sub.add_parser(
        "demo",
        help="run a demo workload on a fresh local fleet",
        description="Start a local fleet, submit a demo workload with a "
        "progress bar, print a summary table, stop the fleet.",
    )
    _add_fleet_options(demo, workers=2)
    demo.add_argument(
        "--requests",
        type=_positive_int,
        default=1200,
        metavar="N",
        help="requests to submit (default 1200)",
    )
    demo.add_argument(
        "--keys",
        type=_positive_int,
        default=60,
        metavar="K",
        help="distinct arguments among them (default 60)",
    )
    demo.add_argument(
        "--compute-ms",
        type=_positive_int,
        default=200,
        metavar="MS",
        help="simulated compute time per distinct key (default 200)",
    )
    demo.add_argument(
        "--clients",
        type=_positive_int,
        default=8,
        metavar="T",
        help="concurrent submitting threads (default 8)",
    )
    demo.set_defaults(handler=cmd_demo)

    worker = sub.add_parser(
        "worker",
        help="start one worker node that joins a running fleet",
        description="Run `celery -A tiercel.workers.app worker` with the fleet's "
        "URLs (from TIERCEL_* or a running `tiercel up`).",
    )
    worker.add_argument("--concurrency", type=_positive_int, default=2, metavar="C")
    worker.add_argument("--pool", choices=("prefork", "solo", "threads"), default="prefork")
    worker.add_argument("--name", default=None, help="node name (default tiercel-PID@HOST)")
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(handler=cmd_worker)

    call = sub.add_parser(
        "call",
        help="submit one cached task and print its result",
        description="Submit TASK with JSON arguments and print the result and where it came from.",
    )
    call.add_argument("task", help="registered task name, e.g. tiercel.tasks.examples.slow_square")
    call.add_argument("args", nargs="*", help="positional arguments, each as JSON")
    call.add_argument("--timeout", type=float, default=60.0, help="seconds to wait")
    call.set_defaults(handler=cmd_call)

    show = sub.add_parser("settings", help="print the effective settings (secrets redacted)")
    show.set_defaults(handler=cmd_settings)

    for name, module_name, summary in PLUGGED_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # not built yet
        command = sub.add_parser(name, help=summary, description=module.__doc__)
        module.configure(command)
        command.set_defaults(handler=module.run)
    return parser


def cmd_settings(args: argparse.Namespace) -> int:
    """Print every setting with its environment variable."""
    settings = Settings.from_env()
    for name, value in settings.describe().items():
        print(f"TIERCEL_{name.upper():<28} {value}")
    return 0


def _wait_for_signal(fleet: Any) -> str:
    stop = threading.Event()
    received: list[str] = []

    def handler(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    while not stop.wait(1.0):
        dead = fleet.dead_processes()
        if dead:
            return f"{dead[0].name} exited with code {dead[0].process.returncode}"
    return received[0]


def cmd_up(args: argparse.Namespace) -> int:
    """Run a local fleet until Ctrl-C or SIGTERM."""
    from tiercel.workers.launcher import Fleet, FleetSpec

    settings = Settings.from_env()
    spec = FleetSpec(
        workers=args.workers,
        concurrency=args.concurrency,
        pool=args.pool,
        beat=not args.no_beat,
        flower=not args.no_flower,
        flower_port=args.flower_port or settings.flower_port,
        loglevel=args.loglevel,
    )
    fleet = Fleet(settings, spec)
    fleet.start(on_step=lambda msg: print(f"tiercel: {msg}", flush=True))
    try:
        _print_fleet(fleet)
        reason = _wait_for_signal(fleet)
        print(f"tiercel: stopping ({reason}): warm shutdown, grace {spec.grace:.0f}s", flush=True)
    finally:
        fleet.stop()
    print("tiercel: stopped; no process left running", flush=True)
    return 0


def _print_fleet(fleet: Any) -> None:
    from tiercel.core.settings import redact_url

    s = fleet.settings
    print("tiercel: fleet is up", flush=True)
    print(f"  broker           {redact_url(s.broker_url)}")
    print(f"  result backend   {redact_url(s.result_backend)}")
    print(f"  cache tier       {redact_url(s.cache_url)}")
    for node in fleet.node_names:
        print(
            f"  worker           {node} ({fleet.spec.pool}, concurrency {fleet.spec.concurrency})"
        )
    print(f"  beat             {'1 process' if fleet.spec.beat else 'not started'}")
    if fleet.spec.flower:
        print(f"  flower           http://127.0.0.1:{fleet.spec.flower_port}/")
    print(
        "  try: celery -A tiercel.workers.app inspect ping     (Ctrl-C stops everything)",
        flush=True,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    """Start a fleet, run the demo workload, print the summary, stop."""
    from tiercel.workers.demo import run_demo

    return run_demo(args)


def cmd_worker(args: argparse.Namespace) -> int:
    """Replace this process with a Celery worker joining the fleet."""
    from tiercel.workers.launcher import check_reachable

    settings = resolve_settings()
    for name, url in (("broker", settings.broker_url), ("cache", settings.cache_url)):
        if url:
            check_reachable(name, url)
    node = args.name or f"tiercel-{os.getpid()}@%h"
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
        args.pool,
        "-c",
        str(args.concurrency),
        "-l",
        args.loglevel,
        "-E",
    ]
    os.execve(sys.executable, argv, env)  # noqa: S606 - argv is ours, no shell
    return 0  # pragma: no cover - execve does not return


def cmd_call(args: argparse.Namespace) -> int:
    """Submit one cached task by name and print its result."""
    from tiercel.tasks.registry import find_cached_task

    resolve_settings()  # fail early, one line, when nothing is configured
    import tiercel.workers.app  # noqa: F401  (the configured app: broker and result backend)

    task = find_cached_task(args.task)
    try:
        call_args = [json.loads(arg) for arg in args.args]
    except ValueError as exc:
        raise SettingsError(f"arguments must be JSON values: {exc}") from None
    result = task.submit(*call_args)
    value = result.get(timeout=args.timeout)
    print(json.dumps({"source": result.source, "task_id": result.task_id, "result": value}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tiercel`` console script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except TiercelError as exc:
        print(f"tiercel: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("tiercel: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
