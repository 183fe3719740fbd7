"""``tiercel demo``: a local fleet, a skewed workload, a summary table, then down."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from tiercel.core.settings import Settings
from tiercel.workers.options import PositiveInt, fleet_options

if TYPE_CHECKING:
    from rich.table import Table

REGIONS = ("emea", "amer", "apac", "latam", "nordics", "anz")


def workload(requests: int, keys: int, seed: int = 7) -> list[tuple[str, int]]:
    """``requests`` calls over ``keys`` distinct arguments, Zipf-skewed (s=1.1) as in real use."""
    rng = random.Random(seed)
    distinct = [(REGIONS[i % len(REGIONS)], i // len(REGIONS)) for i in range(keys)]
    weights = [1 / (rank + 1) ** 1.1 for rank in range(keys)]
    return rng.choices(distinct, weights=weights, k=requests)


@dataclass(frozen=True)
class DemoOptions:
    """What ``tiercel demo`` was asked for."""

    workers: int
    concurrency: int
    pool: str
    loglevel: str
    requests: int
    keys: int
    compute_ms: int
    clients: int


def run_demo(args: DemoOptions) -> int:
    """Start a fleet, submit the workload from ``args.clients`` threads, summarise, stop."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from tiercel.workers.launcher import Fleet, FleetSpec

    console = Console()
    settings = Settings.from_env()
    spec = FleetSpec(
        workers=args.workers,
        concurrency=args.concurrency,
        pool=args.pool,
        beat=False,
        flower=False,
        quiet=True,
        loglevel=args.loglevel,
    )
    fleet = Fleet(settings, spec)
    started = time.perf_counter()
    with fleet.running(on_step=lambda msg: console.print(f"[dim]tiercel: {msg}[/dim]")):
        up_seconds = time.perf_counter() - started
        for name, value in fleet.environment().items():
            if name.startswith("TIERCEL_"):
                os.environ[name] = value
        import tiercel.workers.app  # noqa: F401  (configure the client side from the fleet)
        from tiercel.tasks.examples import regional_report

        calls = workload(args.requests, args.keys)
        sources: Counter[str] = Counter()
        lock = threading.Lock()

        def one(call: tuple[str, int]) -> str:
            result = regional_report.submit(call[0], call[1], compute_ms=args.compute_ms)
            value: Any = result.get(timeout=120)
            if value["region"] != call[0] or value["day"] != call[1]:
                raise AssertionError(f"wrong answer for {call}: {value}")
            return str(result.source)

        console.print(
            f"tiercel: fleet up in {up_seconds:.1f}s: {len(fleet.node_names)} node(s) "
            f"x {args.concurrency} {args.pool} processes"
        )
        run_started = time.perf_counter()
        with Progress(
            TextColumn("submitting"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task("requests", total=len(calls))
            with ThreadPoolExecutor(max_workers=args.clients) as pool:
                futures = [pool.submit(one, call) for call in calls]
                for future in as_completed(futures):
                    source = future.result()
                    with lock:
                        sources[source] += 1
                    progress.advance(bar)
        wall = time.perf_counter() - run_started
        console.print(summary_table(args, sources, wall, len(fleet.node_names)))
        from tiercel.tasks import runtime

        runtime.shutdown()  # stop listening before the fleet's Redis goes away
    console.print("tiercel: fleet stopped; no process left running")
    return 0


def summary_table(args: DemoOptions, sources: Counter[str], wall: float, nodes: int) -> Table:
    """The closing table: where answers came from, wall time, speed-up."""
    from rich.table import Table

    processes = nodes * args.concurrency
    # Computing every request on the same processes, perfectly parallel, at best:
    uncached = args.requests * args.compute_ms / 1000 / processes
    table = Table(title="tiercel demo", show_header=True, header_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("requests", f"{args.requests}")
    table.add_row("distinct arguments", f"{args.keys}")
    for source, label in (
        ("memory", "answered from local memory"),
        ("redis", "answered from Redis tier"),
        ("joined", "joined an in-flight computation"),
        ("computed", "enqueued to compute"),
    ):
        table.add_row(label, f"{sources.get(source, 0)}")
    table.add_row("compute per call", f"{args.compute_ms} ms")
    table.add_row("worker processes", f"{processes}")
    table.add_row("wall time", f"{wall:.2f} s")
    table.add_row("computing every request (best case)", f"{uncached:.2f} s")
    table.add_row("speed-up", f"{uncached / wall:.1f}x" if wall > 0 else "n/a")
    return table


@click.command("demo", short_help="run a demo workload on a fresh local fleet")
@fleet_options(workers=2)
@click.option(
    "--requests",
    type=PositiveInt(),
    default=1200,
    metavar="N",
    help="requests to submit (default 1200)",
)
@click.option(
    "--keys",
    type=PositiveInt(),
    default=60,
    metavar="K",
    help="distinct arguments among them (default 60)",
)
@click.option(
    "--compute-ms",
    type=PositiveInt(),
    default=200,
    metavar="MS",
    help="simulated compute time per distinct key (default 200)",
)
@click.option(
    "--clients",
    type=PositiveInt(),
    default=8,
    metavar="T",
    help="concurrent submitting threads (default 8)",
)
def command(**options: Any) -> int:
    """Start a local fleet, submit a demo workload with a progress bar, print a
    summary table, stop the fleet."""
    return run_demo(DemoOptions(**options))
