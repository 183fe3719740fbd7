"""Serve the fleet's aggregated metrics to Prometheus (text format on /metrics).

Every scrape reads the newest `tiercel.metrics.aggregate` result (cached for
a few seconds): counters as `tiercel_*_total`, gauges summed over the fleet,
latencies as summaries in seconds with quantiles 0.5, 0.9 and 0.99 from the
merged sketches (true fleet percentiles), each also as a `_histogram` with
buckets. Beside the view: `tiercel_staleness_bound_seconds` (TIERCEL_STALENESS_BOUND,
to compare invalidation delivery with) and `tiercel_queue_length{queue}`,
messages waiting in each broker queue the app routes to, read from the broker
(cached a few seconds; a broker that does not answer within 2 s serves none).
Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import click

from tiercel.workers.options import Port

__all__ = [
    "STALENESS_BOUND",
    "FleetCollector",
    "command",
    "families",
    "run",
    "serve",
    "staleness_bound",
]

log = logging.getLogger("tiercel.exporter")

#: Seconds one loaded fleet view answers scrapes (aggregations come every ~20 s anyway).
CACHE_SECONDS = 5.0
_QUANTILES = (0.5, 0.9, 0.99)
#: Bucket bounds (seconds) of the histograms every latency is exported as too: a
#: histogram's buckets add across exporters, a summary's quantiles do not.
HISTOGRAM_BOUNDS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
#: Suffix of a latency's histogram family beside its summary of the same name.
HISTOGRAM_SUFFIX = "_histogram"
#: Gauge: the staleness bound (TIERCEL_STALENESS_BOUND), seconds.
STALENESS_BOUND = "tiercel_staleness_bound_seconds"


def families(view: dict[str, Any]) -> Iterator[Any]:
    """Prometheus metric families of one fleet view."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

    from tiercel.core.metrics.sketches import LatencySketch

    merged = view["merged"]
    counters = _value_families(
        merged["counters"], CounterMetricFamily, "tiercel counter {} (fleet-wide sum)"
    )
    gauges = _value_families(
        merged["gauges"], GaugeMetricFamily, "tiercel gauge {} (sum over processes)"
    )
    summaries: dict[str, Any] = {}
    histograms: dict[str, Any] = {}
    for item in merged["sketches"]:
        name = item["name"]
        family = summaries.get(name)
        if family is None:
            family = summaries[name] = Metric(
                name, f"tiercel latency {name} in seconds (merged sketches)", "summary"
            )
            histograms[name] = Metric(
                name + HISTOGRAM_SUFFIX,
                f"tiercel latency {name} in seconds, as buckets that add across exporters",
                "histogram",
            )
        sketch = LatencySketch.from_dict(item["sketch"])
        labels = dict(item["labels"])
        for q in _QUANTILES:
            value = sketch.quantile(q)
            if value is not None:
                family.add_sample(name, {**labels, "quantile": str(q)}, value)
        family.add_sample(name + "_count", labels, sketch.count)
        family.add_sample(name + "_sum", labels, sketch.sum)
        histogram, base = histograms[name], name + HISTOGRAM_SUFFIX
        for bound, count in zip(HISTOGRAM_BOUNDS, sketch.cumulative(HISTOGRAM_BOUNDS), strict=True):
            histogram.add_sample(base + "_bucket", {**labels, "le": repr(bound)}, count)
        histogram.add_sample(base + "_bucket", {**labels, "le": "+Inf"}, sketch.count)
        histogram.add_sample(base + "_count", labels, sketch.count)
        histogram.add_sample(base + "_sum", labels, sketch.sum)
    yield from counters.values()
    yield from gauges.values()
    yield from summaries.values()
    yield from histograms.values()
    fleet = GaugeMetricFamily(
        "tiercel_fleet_processes", "worker processes in the fleet view", labels=["node"]
    )
    for node, figures in view["nodes"].items():
        fleet.add_metric([node], figures["processes"])
    yield fleet
    yield GaugeMetricFamily(
        "tiercel_fleet_clients",
        "client processes (that submit) publishing to the fleet view",
        value=view["fleet"].get("clients", 0),
    )
    ratio = GaugeMetricFamily("tiercel_tier_hit_ratio", "hits / lookups per tier", labels=["tier"])
    for tier, figures in view["fleet"]["tiers"].items():
        ratio.add_metric([tier], figures["hit_ratio"])
    yield ratio
    yield GaugeMetricFamily(
        "tiercel_fleet_aggregated_timestamp_seconds",
        "when the fleet view was aggregated (unix seconds)",
        value=view["aggregated_at"],
    )


class FleetCollector:
    """A prometheus_client collector answering each scrape from the newest fleet view."""

    def __init__(self, settings: Any, *, cache_seconds: float = CACHE_SECONDS) -> None:
        self.settings = settings
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._view: dict[str, Any] | None = None
        self._loaded = 0.0

    def view(self) -> dict[str, Any] | None:
        """The newest fleet view (None when there is none yet)."""
        from tiercel.workers.stats import load_view

        with self._lock:
            if self._view is None or time.monotonic() - self._loaded > self.cache_seconds:
                try:
                    self._view = load_view(self.settings, timeout=5.0)
                    self._loaded = time.monotonic()
                except Exception as exc:  # serve the last view rather than fail the scrape
                    log.warning("reading the fleet view failed: %s", exc)
            return self._view

    def collect(self) -> Iterator[Any]:
        """Called by prometheus_client on every scrape."""
        view = self.view()
        if view is not None:
            yield from families(view)
        yield staleness_bound(self.settings)


def staleness_bound(settings: Any) -> Any:
    """The :data:`STALENESS_BOUND` gauge: the bound invalidation delivery is held to.

    The exporter's own setting, which a deployment shares with its workers (one
    ``TIERCEL_STALENESS_BOUND``, or one app's ``init_app`` settings).
    """
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(
        STALENESS_BOUND,
        "TIERCEL_STALENESS_BOUND: the longest a local level may answer after an invalidation",
        value=settings.staleness_bound,
    )


def serve(settings: Any, address: str, port: int, *, app: Any = None) -> Any:
    """Start serving on ``address:port`` in a thread; returns the HTTP server.

    ``app`` is the Celery app whose queues are measured (default: the running
    command's, :func:`tiercel.workers.command_app.command_app`).
    """
    from prometheus_client import CollectorRegistry, start_http_server

    from tiercel.workers.command_app import command_app
    from tiercel.workers.queue_lengths import QueueLengthCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(settings))
    registry.register(QueueLengthCollector(app if app is not None else command_app()))
    server, _thread = start_http_server(port, addr=address, registry=registry)
    return server


def run(address: str = "127.0.0.1", port: int = 9808) -> int:
    """Serve until Ctrl-C or SIGTERM."""
    from tiercel.core.errors import ServerError
    from tiercel.core.settings import resolve_settings

    settings = resolve_settings()
    try:
        server = serve(settings, address, port)
    except OSError as exc:
        raise ServerError(f"cannot listen on {address}:{port}: {exc.strerror}") from None
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"tiercel: exporter on http://{address}:{port}/metrics", flush=True)
    stop.wait()
    server.shutdown()
    return 0


@click.command("exporter", short_help="serve the fleet's metrics to Prometheus", help=__doc__)
@click.option(
    "--port", type=Port(), default=9808, metavar="PORT", help="port to listen on (default 9808)"
)
@click.option(
    "--address", default="127.0.0.1", metavar="ADDRESS", help="address to bind (default 127.0.0.1)"
)
def command(port: int, address: str) -> int:
    # The help is the module's docstring.
    return run(address, port)


def _value_families(items: list[dict[str, Any]], kind: Any, describe: str) -> dict[str, Any]:
    """One counter or gauge family per metric name, one sample per label set."""
    families: dict[str, Any] = {}
    for item in items:
        name = item["name"]
        family = families.get(name)
        if family is None:
            family = families[name] = kind(
                name, describe.format(name), labels=sorted(item["labels"])
            )
        family.add_metric(
            [item["labels"].get(label, "") for label in family._labelnames], item["value"]
        )
    return families
