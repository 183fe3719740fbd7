"""The fleet's aggregated metrics: requests and hit ratio per tier, fleet-wide
latency percentiles (merged sketches, so true percentiles), compute seconds
saved, why values were computed (miss reasons) and duplicate computations,
per task, per node and per process, and how long invalidations take to reach
each process (the delay of beat's delivery probes).

Reads the newest `tiercel.metrics.aggregate` result (beat runs one every
TIERCEL_AGGREGATE_INTERVAL seconds). With none yet it says so in one line and
exits 1; `--fresh` merges the live snapshots itself instead of waiting for beat.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

__all__ = ["command", "load_view", "render", "run"]


def load_view(
    settings: Any, *, fresh: bool = False, timeout: float = 10.0
) -> dict[str, Any] | None:
    """The newest fleet view, or None when no aggregation exists yet."""
    from tiercel.tasks import fleet_view, publisher

    client = publisher.metrics_client(settings)
    try:
        if fresh:
            return fleet_view.aggregate(client, settings.namespace, settings.metrics_interval)
        task_id = client.get(publisher.latest_key(settings.namespace))
    finally:
        client.close()
    if task_id is None:
        return None
    from celery.result import AsyncResult

    from tiercel.workers.command_app import command_app

    text = task_id.decode() if isinstance(task_id, bytes) else str(task_id)
    result = AsyncResult(text, app=command_app())
    view: dict[str, Any] = result.get(timeout=timeout, propagate=True)
    return view


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.2f}"


def _delivery(figures: dict[str, Any] | None) -> str:
    """The head's clause on invalidation delivery (beat's probes), if any were heard."""
    if not figures:
        return ""
    return f"invalidation delivery p99 {_ms(figures.get('p99'))} ms; "


def _counts(counts: dict[str, float]) -> str:
    """``name count`` pairs, largest first."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{name} {count:,.0f}" for name, count in ordered)


def render(view: dict[str, Any]) -> Any:
    """The view as a group of rich tables."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    fleet = view["fleet"]
    age = time.time() - view["aggregated_at"]
    head = Text(
        f"{fleet['nodes']} node(s), {fleet.get('workers', fleet['processes'])} worker "
        f"process(es), {fleet.get('clients', 0)} client(s); "
        f"{fleet['requests']:,.0f} requests, {fleet['computed']:,.0f} computed; "
        f"compute seconds saved {fleet['compute_seconds_saved']:,.1f}; "
        f"{_delivery(fleet.get('invalidation_delivery'))}aggregated {age:.0f}s ago",
        style="bold",
    )

    tiers = Table(title="hit ratio per tier")
    for column in ("tier", "hits", "misses", "hit ratio"):
        tiers.add_column(column, justify="left" if column == "tier" else "right")
    for tier, figures in fleet["tiers"].items():
        tiers.add_row(
            tier,
            f"{figures['hits']:,.0f}",
            f"{figures['misses']:,.0f}",
            f"{figures['hit_ratio']:.1%}",
        )

    latency = Table(title="request latency by source, ms (fleet-wide, merged sketches)")
    for column in ("source", "requests", "p50", "p90", "p99", "max"):
        latency.add_column(column, justify="left" if column == "source" else "right")
    rows = dict(view["latency"])
    if fleet.get("latency"):
        rows["all"] = fleet["latency"]
    for source, figures in rows.items():
        latency.add_row(
            source,
            f"{figures['count']:,}",
            _ms(figures.get("p50")),
            _ms(figures.get("p90")),
            _ms(figures.get("p99")),
            _ms(figures["max"]),
        )

    timers = Table(title="timers (tiercel.monitor()), ms, fleet-wide")
    for column in ("timer", "count", "average", "p50", "p99", "max"):
        timers.add_column(column, justify="left" if column == "timer" else "right")
    for name, figures in view.get("timers", {}).items():
        timers.add_row(
            name,
            f"{figures['count']:,}",
            _ms(figures["sum"] / figures["count"]),
            _ms(figures.get("p50")),
            _ms(figures.get("p99")),
            _ms(figures["max"]),
        )

    tasks = Table(title="per task")
    for column in ("task", "requests", "by source", "saved s", "compute p50 ms", "compute p99 ms"):
        tasks.add_column(column, justify="left" if column in ("task", "by source") else "right")
    for name, figures in view["tasks"].items():
        compute = figures.get("compute_seconds") or {}
        sources = ", ".join(
            f"{source} {count:,.0f}" for source, count in figures["by_source"].items()
        )
        tasks.add_row(
            name,
            f"{figures['requests']:,.0f}",
            sources,
            f"{figures['compute_seconds_saved']:,.1f}",
            _ms(compute.get("p50")),
            _ms(compute.get("p99")),
        )

    misses = Table(title="computations by miss reason, and duplicate computations, per task")
    for column in ("task", "computations", "by reason", "duplicates by cause"):
        misses.add_column(column, justify="right" if column == "computations" else "left")
    miss_rows = {name: f for name, f in view["tasks"].items() if f.get("misses")}
    fleet_misses = fleet.get("misses") or {}
    if fleet_misses:
        miss_rows["(fleet)"] = {"misses": fleet_misses, "duplicates": fleet.get("duplicates") or {}}
    for name, figures in miss_rows.items():
        misses.add_row(
            name,
            f"{sum(figures['misses'].values()):,.0f}",
            _counts(figures["misses"]),
            _counts(figures.get("duplicates") or {}) or "-",
        )

    processes = Table(title="per node and process (clients count the hits they answered)")
    for column in (
        "node",
        "role",
        "pid",
        "requests",
        "computed",
        "saved s",
        "delivery max ms",
        "snapshot age s",
    ):
        processes.add_column(column, justify="left" if column in ("node", "role") else "right")
    for process in view["processes"]:
        delivery = process.get("invalidation_delivery") or {}
        processes.add_row(
            process["node"],
            process.get("role", "worker"),
            str(process["pid"]),
            f"{process['requests']:,.0f}",
            f"{process['computed']:,.0f}",
            f"{process['compute_seconds_saved']:,.1f}",
            _ms(delivery.get("max")),
            f"{process['age']:.1f}" if process.get("age") is not None else "-",
        )
    retired = view.get("retired")
    if retired:
        processes.add_row(
            "(exited)",
            "-",
            "-",
            f"{retired['requests']:,.0f}",
            f"{retired['computed']:,.0f}",
            f"{retired['compute_seconds_saved']:,.1f}",
            "-",
            "-",
        )
    shown: list[Any] = [head, tiers, latency, *([timers] if view.get("timers") else []), tasks]
    if fleet_misses:
        shown.append(misses)
    return Group(*shown, processes)


def _print(view: dict[str, Any], as_json: bool) -> None:
    if as_json:
        shown = {key: value for key, value in view.items() if key != "merged"}
        print(json.dumps(shown, indent=2, sort_keys=True))
        return
    from rich.console import Console

    Console().print(render(view))


def run(
    *, as_json: bool = False, watch: float | None = None, fresh: bool = False, timeout: float = 10.0
) -> int:
    """Print the fleet view (once, or every ``watch`` seconds)."""
    from tiercel.core.settings import resolve_settings

    settings = resolve_settings()
    while True:
        view = load_view(settings, fresh=fresh, timeout=timeout)
        if view is None:
            print(
                "tiercel: no fleet aggregation yet: is beat running? "
                "(or use `tiercel stats --fresh`)",
                file=sys.stderr,
            )
            return 1
        if watch is None:
            _print(view, as_json)
            return 0
        if not as_json:
            print("\033[2J\033[H", end="")  # clear the screen between frames
        _print(view, as_json)
        time.sleep(max(0.5, watch))


@click.command("stats", short_help="the fleet's aggregated metrics as a table", help=__doc__)
@click.option("--json", "as_json", is_flag=True, help="print the fleet view as JSON")
@click.option(
    "--watch",
    type=float,
    is_flag=False,
    flag_value=5.0,
    default=None,
    metavar="[SECONDS]",
    help="redraw every SECONDS (default 5) until Ctrl-C",
)
@click.option(
    "--fresh",
    is_flag=True,
    help="merge the live per-process snapshots now instead of reading beat's latest aggregation",
)
@click.option(
    "--timeout",
    type=float,
    default=10.0,
    metavar="SECONDS",
    help="seconds to wait for the result backend (default 10)",
)
def command(as_json: bool, watch: float | None, fresh: bool, timeout: float) -> int:
    # The help is the module's docstring.
    return run(as_json=as_json, watch=watch, fresh=fresh, timeout=timeout)
