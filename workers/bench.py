"""Model your own workload: tiercel against plain Celery on the same fleet.

Draws --requests calls over --keys distinct arguments with Zipf(--zipf)
popularity, each costing --compute-ms on a worker, from --concurrency client
threads; invalidates a random key after a request with probability
--invalidate-rate. Runs the workload through tiercel (cached task, submit()),
then the same calls through a plain Celery task doing the same work (each call
counts itself in Redis, then sleeps), and reports throughput,
latency percentiles by where each answer came from, the hit ratio of each tier
and the computations saved. Uses the fleet the TIERCEL_* URLs (or a running
`tiercel up`) point at, else starts an embedded one for the run. Each phase
stops taking new requests after --max-seconds.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import click

from tiercel.core.errors import ServerError, SettingsError
from tiercel.workers.options import pool_option

#: Bounds on the options: every list this command builds is at most this long.
MAX_KEYS = 1_000_000
MAX_REQUESTS = 1_000_000
MAX_CONCURRENCY = 256
#: Seconds a request may outlive its phase's deadline before it counts as failed.
GRACE = 30.0
#: Where answers come from, in the order the report lists them.
CACHED_SOURCES = ("memory", "redis", "joined", "computed")
PLAIN = "plain Celery"


@dataclass(frozen=True)
class BenchOptions:
    """The workload and the embedded fleet ``tiercel bench`` was asked for (its options)."""

    keys: int
    zipf: float
    compute_ms: int
    requests: int
    concurrency: int
    invalidate_rate: float
    max_seconds: float
    no_plain: bool
    seed: int
    workers: int
    worker_concurrency: int
    pool: str
    json: bool


def validate(args: BenchOptions) -> None:
    """Raise SettingsError naming the first option out of range."""
    checks = (
        ("--keys", args.keys, 1 <= args.keys <= MAX_KEYS, f"1 to {MAX_KEYS:,}"),
        ("--requests", args.requests, 1 <= args.requests <= MAX_REQUESTS, f"1 to {MAX_REQUESTS:,}"),
        ("--zipf", args.zipf, 0 <= args.zipf <= 10, "0 (uniform) to 10"),
        ("--compute-ms", args.compute_ms, 0 <= args.compute_ms <= 600_000, "0 to 600000"),
        (
            "--concurrency",
            args.concurrency,
            1 <= args.concurrency <= MAX_CONCURRENCY,
            f"1 to {MAX_CONCURRENCY}",
        ),
        ("--invalidate-rate", args.invalidate_rate, 0 <= args.invalidate_rate <= 1, "0 to 1"),
        (
            "--max-seconds",
            args.max_seconds,
            0 < args.max_seconds <= 86_400,
            "more than 0, at most 86400",
        ),
        ("--workers", args.workers, 1 <= args.workers <= 64, "1 to 64"),
        (
            "--worker-concurrency",
            args.worker_concurrency,
            1 <= args.worker_concurrency <= 256,
            "1 to 256",
        ),
    )
    for option, value, ok, expected in checks:
        if not ok:
            raise SettingsError(f"{option} {value}: expected {expected}")


def plan(keys: int, zipf: float, requests: int, seed: int) -> list[int]:
    """Key ranks of ``requests`` calls: rank r is drawn with weight 1 / (r + 1) ** zipf."""
    rng = random.Random(seed)
    weights = [1.0 / (rank + 1) ** zipf for rank in range(keys)]
    return rng.choices(range(keys), weights=weights, k=requests)


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    planned: int
    completed: int = 0
    failed: int = 0
    first_error: str = ""
    invalidations: int = 0
    seconds: float = 0.0
    stopped_early: bool = False
    sources: Counter[str] = field(default_factory=Counter)
    latency: dict[str, Any] = field(default_factory=dict)  # source -> LatencySketch
    distinct: set[int] = field(default_factory=set)

    def percentiles(self, source: str | None = None) -> dict[str, float]:
        """p50/p95/p99 in milliseconds of one source (or of all of them)."""
        from tiercel.core.metrics.sketches import LatencySketch

        sketches = [self.latency[source]] if source else list(self.latency.values())
        merged = LatencySketch.merged(sketches) if sketches else LatencySketch()
        out: dict[str, float] = {}
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            value = merged.quantile(q)
            out[name] = round(value * 1e3, 3) if value is not None else 0.0
        return out

    def throughput(self) -> float:
        """Completed requests per second."""
        return self.completed / self.seconds if self.seconds > 0 else 0.0


def run_phase(
    name: str,
    ranks: list[int],
    call: Callable[[int, float], str],
    *,
    concurrency: int,
    max_seconds: float,
    invalidate: Callable[[int], None] | None,
    invalidate_rate: float,
    keys: int,
    seed: int,
    advance: Callable[[], None] = lambda: None,
) -> Phase:
    """Run ``call(rank, timeout)`` for every rank from ``concurrency`` threads until done
    or ``max_seconds`` passed; ``call`` returns where the answer came from."""
    from tiercel.core.metrics.sketches import LatencySketch

    phase = Phase(name, planned=len(ranks))
    lock = threading.Lock()
    cursor = itertools.count()
    started = time.perf_counter()
    deadline = started + max_seconds

    def worker(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        while True:
            position = next(cursor)
            now = time.perf_counter()
            if position >= len(ranks):
                return
            if now >= deadline:
                phase.stopped_early = True
                return
            rank = ranks[position]
            began = time.perf_counter()
            try:
                source = call(rank, deadline - began + GRACE)
            except Exception as exc:  # counted and reported: one failure does not stop a run
                with lock:
                    phase.failed += 1
                    phase.first_error = phase.first_error or f"{type(exc).__name__}: {exc}"
                advance()
                continue
            elapsed = time.perf_counter() - began
            with lock:
                phase.completed += 1
                phase.sources[source] += 1
                phase.distinct.add(rank)
                sketch = phase.latency.get(source)
                if sketch is None:
                    sketch = phase.latency[source] = LatencySketch()
            sketch.add(elapsed)
            advance()
            if invalidate is not None and invalidate_rate and rng.random() < invalidate_rate:
                invalidate(rng.randrange(keys))
                with lock:
                    phase.invalidations += 1

    with ThreadPoolExecutor(concurrency, thread_name_prefix=f"bench-{name}") as pool:
        for future in [pool.submit(worker, index) for index in range(concurrency)]:
            future.result()
    phase.seconds = time.perf_counter() - started
    return phase


@contextmanager
def fleet_for(args: BenchOptions, say: Callable[[str], None]) -> Iterator[str]:
    """The fleet to run on: the configured one (checked), else an embedded one.

    Yields a one-line description of the fleet for the report.
    """
    from tiercel.core.embedded.fleet_file import read_fleet_file
    from tiercel.core.settings import Settings, redact_url, resolve_settings

    settings = Settings.from_env()
    if not settings.embedded or read_fleet_file() is not None:
        settings = resolve_settings(settings)
        nodes = _answering_nodes(settings)
        if not nodes:
            raise ServerError(
                f"no worker answers on broker {redact_url(settings.broker_url)}: "
                "start one (`tiercel worker`), or unset TIERCEL_* to run on an "
                "embedded fleet"
            )
        yield (
            f"existing fleet: {len(nodes)} node(s) on broker "
            f"{redact_url(settings.broker_url)}, cache {redact_url(settings.cache_url)}"
        )
        return
    from tiercel.workers.launcher import Fleet, FleetSpec

    spec = FleetSpec(
        workers=args.workers,
        concurrency=args.worker_concurrency,
        pool=args.pool,
        beat=False,
        flower=False,
        quiet=True,
        loglevel="WARNING",
        grace=15.0,
    )
    fleet = Fleet(settings, spec)
    with fleet.running(on_step=lambda msg: say(f"tiercel: {msg}")):
        for name, value in fleet.environment().items():
            if name.startswith("TIERCEL_"):
                os.environ[name] = value
        try:
            yield (
                f"embedded fleet started for this run: {args.workers} node(s) x "
                f"{args.worker_concurrency} {args.pool} processes"
            )
        finally:
            # Close this client's listener before its Redis stops, not after (no
            # reconnect warnings on the way out).
            runtime = sys.modules.get("tiercel.tasks.runtime")
            if runtime is not None:
                runtime.shutdown()


def _answering_nodes(settings: Any) -> list[str]:
    from tiercel.workers.control import control_app

    app = control_app(settings)
    try:
        replies = app.control.ping(timeout=1.0) or []
    finally:
        app.close()
    return sorted(name for reply in replies for name in reply)


def run(args: BenchOptions) -> int:
    """Run the workload through tiercel, then plain Celery, and report both."""
    from rich.console import Console

    validate(args)
    console = Console(stderr=args.json)
    with fleet_for(args, lambda msg: console.print(f"[dim]{msg}[/dim]")) as fleet_line:
        figures = measure(args, fleet_line, console)
    if args.json:
        print(json.dumps(figures))
    else:
        console.print(report_tables(figures))
    if figures["tiercel"]["failed"] or figures["tiercel"]["wrong"]:
        console.print(
            f"tiercel bench: {figures['tiercel']['failed']} request(s) failed, "
            f"{figures['tiercel']['wrong']} wrong: {figures['tiercel']['first_error']}"
        )
        return 1
    return 0


def measure(args: BenchOptions, fleet_line: str, console: Any) -> dict[str, Any]:
    """Both phases on the running fleet; returns every figure as plain data."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    import tiercel.workers.app  # noqa: F401  (the configured app: broker and result backend)
    from tiercel.tasks import runtime
    from tiercel.tasks.examples import counted_square, plain_counted_square

    rt = runtime.current()
    ranks = plan(args.keys, args.zipf, args.requests, args.seed)
    base = random.Random().randrange(10**12)  # fresh keys: every run starts cold
    run_id = uuid.uuid4().hex
    counter = f"{rt.namespace}:bench:{run_id}:computations"
    plain_counter = f"{rt.namespace}:bench:{run_id}:plain-computations"
    wrong: list[int] = []

    def cached(rank: int, timeout: float) -> str:
        n = base + rank
        result = counted_square.submit(n, counter, args.compute_ms)
        if result.get(timeout=timeout) != n * n:
            wrong.append(rank)
        return str(result.source)

    def invalidate(rank: int) -> None:
        counted_square.invalidate(base + rank, counter, args.compute_ms)

    def plain(rank: int, timeout: float) -> str:
        n = base + rank
        answer = plain_counted_square.delay(n, plain_counter, args.compute_ms)
        if answer.get(timeout=timeout) != n * n:
            wrong.append(rank)
        return PLAIN

    console.print(f"tiercel bench on the {fleet_line}")
    common: dict[str, Any] = {
        "concurrency": args.concurrency,
        "max_seconds": args.max_seconds,
        "keys": args.keys,
        "seed": args.seed,
    }
    phases: list[Phase] = []
    with Progress(
        TextColumn("{task.description:<13}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bars = {"tiercel": progress.add_task("tiercel", total=len(ranks))}
        if not args.no_plain:
            bars[PLAIN] = progress.add_task(PLAIN, total=len(ranks))
        phases.append(
            run_phase(
                "tiercel",
                ranks,
                cached,
                invalidate=invalidate,
                invalidate_rate=args.invalidate_rate,
                advance=lambda: progress.advance(bars["tiercel"]),
                **common,
            )
        )
        cached_wrong = len(wrong)
        if not args.no_plain:
            phases.append(
                run_phase(
                    PLAIN,
                    ranks,
                    plain,
                    invalidate=None,
                    invalidate_rate=0.0,
                    advance=lambda: progress.advance(bars[PLAIN]),
                    **common,
                )
            )
    computations, plain_computations = (
        int(count or 0) for count in rt.tier.client.mget(counter, plain_counter)
    )
    rt.tier.client.delete(counter, plain_counter)
    return figures_of(
        args,
        fleet_line,
        phases,
        (computations, plain_computations),
        cached_wrong,
        len(wrong) - cached_wrong,
    )


def figures_of(
    args: BenchOptions,
    fleet_line: str,
    phases: list[Phase],
    counted: tuple[int, int],
    cached_wrong: int,
    plain_wrong: int,
) -> dict[str, Any]:
    """Every reported figure, as JSON-ready data (``counted``: the computations each
    phase's task counted in Redis, tiercel's then plain Celery's)."""
    computations, plain_computations = counted
    cached = phases[0]
    done = cached.completed
    memory = cached.sources.get("memory", 0)
    redis_hits = cached.sources.get("redis", 0)
    reached_redis = done - memory
    figures: dict[str, Any] = {
        "fleet": fleet_line,
        "workload": {
            "keys": args.keys,
            "zipf": args.zipf,
            "compute_ms": args.compute_ms,
            "requests": args.requests,
            "concurrency": args.concurrency,
            "invalidate_rate": args.invalidate_rate,
            "max_seconds": args.max_seconds,
            "seed": args.seed,
        },
        "tiercel": {
            "completed": done,
            "failed": cached.failed,
            "wrong": cached_wrong,
            "first_error": cached.first_error,
            "stopped_early": cached.stopped_early,
            "seconds": round(cached.seconds, 3),
            "throughput": round(cached.throughput(), 1),
            "sources": {source: cached.sources.get(source, 0) for source in CACHED_SOURCES},
            "latency_ms": {
                source: cached.percentiles(source)
                for source in CACHED_SOURCES
                if source in cached.latency
            },
            "latency_all_ms": cached.percentiles(),
            "distinct_keys": len(cached.distinct),
            "invalidations": cached.invalidations,
            "computations": computations,
            "computations_saved": done - computations,
            "hit_ratio": {
                "memory": round(memory / done, 4) if done else 0.0,
                "redis": round(redis_hits / reached_redis, 4) if reached_redis else 0.0,
                "any cache": round((memory + redis_hits) / done, 4) if done else 0.0,
            },
        },
    }
    if len(phases) > 1:
        plain = phases[1]
        figures["plain"] = {
            "completed": plain.completed,
            "failed": plain.failed,
            "wrong": plain_wrong,
            "first_error": plain.first_error,
            "stopped_early": plain.stopped_early,
            "seconds": round(plain.seconds, 3),
            "throughput": round(plain.throughput(), 1),
            "latency_all_ms": plain.percentiles(),
            "computations": plain_computations,
        }
        if plain.throughput() > 0:
            figures["speedup"] = round(cached.throughput() / plain.throughput(), 2)
    return figures


def report_tables(figures: dict[str, Any]) -> Any:
    """The figures as rich tables (a Group, printed once)."""
    from rich.console import Group
    from rich.table import Table

    cached = figures["tiercel"]
    plain = figures.get("plain")
    w = figures["workload"]
    title = (
        f"{w['requests']} requests over {w['keys']} keys (Zipf {w['zipf']:g}), "
        f"{w['compute_ms']} ms compute, {w['concurrency']} client threads, "
        f"invalidate rate {w['invalidate_rate']:g}"
    )
    by_source = Table(title=title, header_style="bold")
    for column in ("answered from", "requests", "share", "p50 ms", "p95 ms", "p99 ms"):
        by_source.add_column(column, justify="left" if column == "answered from" else "right")
    done = cached["completed"] or 1
    labels = {
        "memory": "local memory",
        "redis": "Redis tier",
        "joined": "joined in-flight",
        "computed": "enqueued, computed",
    }
    for source in CACHED_SOURCES:
        count = cached["sources"][source]
        p = cached["latency_ms"].get(source, {})
        by_source.add_row(
            labels[source],
            f"{count}",
            f"{count / done:.1%}",
            *(f"{p[name]:.2f}" if p else "" for name in ("p50", "p95", "p99")),
        )
    if plain is not None:
        p = plain["latency_all_ms"]
        by_source.add_row(
            PLAIN,
            f"{plain['completed']}",
            "",
            *(f"{p[name]:.2f}" for name in ("p50", "p95", "p99")),
        )

    summary = Table(title="tiercel against plain Celery, same fleet", header_style="bold")
    summary.add_column("measure")
    summary.add_column("tiercel", justify="right")
    summary.add_column(PLAIN, justify="right")
    dash = "-"
    summary.add_row(
        "requests completed", f"{cached['completed']}", f"{plain['completed']}" if plain else dash
    )
    summary.add_row(
        "wall time", f"{cached['seconds']:.2f} s", f"{plain['seconds']:.2f} s" if plain else dash
    )
    summary.add_row(
        "throughput",
        f"{cached['throughput']:.0f} req/s",
        f"{plain['throughput']:.0f} req/s" if plain else dash,
    )
    all_p = cached["latency_all_ms"]
    summary.add_row(
        "latency p50 / p99",
        f"{all_p['p50']:.2f} / {all_p['p99']:.2f} ms",
        (f"{plain['latency_all_ms']['p50']:.2f} / {plain['latency_all_ms']['p99']:.2f} ms")
        if plain
        else dash,
    )
    summary.add_row(
        "computations", f"{cached['computations']}", f"{plain['computations']}" if plain else dash
    )
    summary.add_row("computations saved", f"{cached['computations_saved']}", "0")
    summary.add_row("distinct keys requested", f"{cached['distinct_keys']}", "")
    summary.add_row("invalidations", f"{cached['invalidations']}", "")
    ratio = cached["hit_ratio"]
    summary.add_row(
        "hit ratio: local memory / Redis tier / any cache",
        f"{ratio['memory']:.1%} / {ratio['redis']:.1%} / {ratio['any cache']:.1%}",
        "",
    )
    if "speedup" in figures:
        summary.add_row("throughput speed-up", f"{figures['speedup']:.1f}x", "1.0x")
    notes = [f"fleet: {figures['fleet']}"]
    for name, phase in (("tiercel", cached), (PLAIN, plain)):
        if phase and phase["stopped_early"]:
            notes.append(
                f"{name}: stopped at --max-seconds {w['max_seconds']:g} after "
                f"{phase['completed']} of {w['requests']} requests"
            )
        if phase and phase["failed"]:
            notes.append(f"{name}: {phase['failed']} failed ({phase['first_error']})")
    return Group(by_source, summary, *notes)


@click.command("bench", short_help="model your own workload against plain Celery", help=__doc__)
@click.option(
    "--keys", type=int, default=1000, metavar="K", help="distinct arguments (default 1000)"
)
@click.option(
    "--zipf",
    type=float,
    default=1.1,
    metavar="S",
    help="Zipf exponent of key popularity; 0 is uniform (default 1.1)",
)
@click.option(
    "--compute-ms",
    type=int,
    default=20,
    metavar="MS",
    help="compute time of one call on a worker (default 20)",
)
@click.option(
    "--requests", type=int, default=2000, metavar="N", help="requests per phase (default 2000)"
)
@click.option(
    "--concurrency",
    type=int,
    default=16,
    metavar="T",
    help="client threads submitting at once (default 16)",
)
@click.option(
    "--invalidate-rate",
    type=float,
    default=0.0,
    metavar="P",
    help="probability that a request is followed by invalidating a random key (default 0)",
)
@click.option(
    "--max-seconds",
    type=float,
    default=20.0,
    metavar="S",
    help="each phase stops taking new requests after this long (default 20)",
)
@click.option("--no-plain", is_flag=True, help="skip the plain Celery phase")
@click.option(
    "--seed", type=int, default=7, metavar="N", help="random seed of the workload (default 7)"
)
@click.option(
    "--workers",
    type=int,
    default=2,
    metavar="N",
    help="embedded fleet only: worker nodes (default 2)",
)
@click.option(
    "--worker-concurrency",
    type=int,
    default=2,
    metavar="C",
    help="embedded fleet only: processes per node (default 2)",
)
@pool_option("embedded fleet only: Celery pool (default prefork)")
@click.option(
    "--json",
    is_flag=True,
    help="print the figures as one JSON object on stdout (the report goes to stderr)",
)
def command(**options: Any) -> int:
    # The help is the module's docstring. Ranges are checked by validate(): an option
    # out of range is a SettingsError, one line and status 2 like any bad setting.
    return run(BenchOptions(**options))
