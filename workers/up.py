"""``tiercel up``: a local fleet until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from tiercel.core.settings import Settings
from tiercel.workers.options import Port, fleet_options


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


@click.command("up", short_help="start Redis (if needed), workers, beat and Flower")
@fleet_options(workers=1)
@click.option("--no-flower", is_flag=True, help="do not start Flower")
@click.option("--no-beat", is_flag=True, help="do not start beat")
@click.option(
    "--flower-port",
    type=Port(),
    default=None,
    metavar="PORT",
    help="Flower's port on 127.0.0.1 (default TIERCEL_FLOWER_PORT or 5555)",
)
def command(
    workers: int,
    concurrency: int,
    pool: str,
    loglevel: str,
    no_flower: bool,
    no_beat: bool,
    flower_port: int | None,
) -> int:
    """Start the embedded Redis servers when no URL is configured, N worker nodes,
    one beat and Flower; Ctrl-C or SIGTERM stops everything gracefully."""
    from tiercel.workers.launcher import Fleet, FleetSpec

    settings = Settings.from_env()
    spec = FleetSpec(
        workers=workers,
        concurrency=concurrency,
        pool=pool,
        beat=not no_beat,
        flower=not no_flower,
        flower_port=flower_port or settings.flower_port,
        loglevel=loglevel,
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
