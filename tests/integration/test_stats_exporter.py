"""`tiercel stats`, `tiercel exporter` and Flower against the session fleet."""

from __future__ import annotations

import json
import urllib.request
import uuid

import pytest

from tiercel.core.embedded.redis_server import free_port
from tiercel.core.settings import resolve_settings
from tiercel.tasks.maintenance import aggregate
from tiercel.workers.cli import main
from tiercel.workers.launcher import Fleet

pytestmark = pytest.mark.integration


def _get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
        return response.read().decode()


def test_stats_reads_the_latest_aggregation(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    task_id = aggregate.delay().id
    aggregate.AsyncResult(task_id).get(timeout=30)
    assert main(["stats", "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["task_id"] == task_id
    assert view["fleet"]["processes"] >= 4 and view["fleet"]["nodes"] >= 2
    assert "redis" in view["fleet"]["tiers"]
    assert main(["stats"]) == 0
    table = capsys.readouterr().out
    assert "hit ratio per tier" in table and "per node and process" in table


def test_stats_without_an_aggregation_says_so_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TIERCEL_NAMESPACE", f"empty-{uuid.uuid4().hex[:8]}")
    assert main(["stats"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tiercel: no fleet aggregation yet") and "\n" not in err


def test_exporter_serves_the_fleet_view_in_prometheus_format(fleet: Fleet) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from tiercel.tasks.examples import slow_square
    from tiercel.workers.exporter import serve

    for n in range(40):  # enough calls that some are timed (1 in 16)
        slow_square.delay(7000 + n % 4, 1).get(timeout=30)
    aggregate.delay().get(timeout=30)
    port = free_port()
    server = serve(resolve_settings(), "127.0.0.1", port)
    try:
        text = _get(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.shutdown()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families["tiercel_fleet_processes"].type == "gauge"
    assert sum(s.value for s in families["tiercel_fleet_processes"].samples) >= 4
    hits = families["tiercel_cache_hits"]  # the text format's counter family drops _total
    assert hits.type == "counter" and hits.samples[0].name == "tiercel_cache_hits_total"
    assert {s.labels["level"] for s in hits.samples} >= {"memory", "bytes"}
    assert "tiercel_tier_hit_ratio" in families


def test_the_table_shows_timers_clients_and_exited_processes() -> None:
    from rich.console import Console

    from tiercel.core.metrics.monitor import PerformanceMonitor
    from tiercel.core.metrics.registry import MetricsRegistry
    from tiercel.tasks.fleet_view import build_view
    from tiercel.tasks.retired import without_gauges
    from tiercel.workers.stats import render

    worker, client, gone = MetricsRegistry(), MetricsRegistry(), MetricsRegistry()
    PerformanceMonitor(worker).record("report-render", 0.25)
    client.inc("tiercel_requests_total", 3, task="t", source="redis")
    gone.inc("tiercel_requests_total", 2, task="t", source="memory")
    documents = [
        {"node": "w1@host", "role": "worker", "snapshot": worker.snapshot(), "age": 0.1},
        {"node": "host", "role": "client", "snapshot": client.snapshot(), "age": 0.2},
    ]
    view = build_view(documents, interval=10, retired=without_gauges(gone.snapshot()))
    assert view["fleet"]["workers"] == 1 and view["fleet"]["clients"] == 1
    assert view["fleet"]["nodes"] == 1 and list(view["nodes"]) == ["w1@host"]
    assert view["tasks"]["t"]["by_source"] == {"redis": 3, "memory": 2}
    assert view["timers"]["report-render"]["count"] == 1
    console = Console(width=160, record=True)
    console.print(render(view))
    table = console.export_text()
    assert "report-render" in table and "(exited)" in table
    assert "1 worker process(es), 1 client(s)" in table


def test_the_table_shows_how_long_invalidations_took_to_reach_each_process() -> None:
    from rich.console import Console

    from tiercel.core.metrics.names import INVALIDATION_DELIVERY_SECONDS
    from tiercel.core.metrics.registry import MetricsRegistry
    from tiercel.tasks.fleet_view import build_view
    from tiercel.workers.stats import render

    heard, deaf = MetricsRegistry(), MetricsRegistry()
    heard.observe(INVALIDATION_DELIVERY_SECONDS, 0.0123, listener="notifier")
    documents = [
        {"node": "w1@host", "role": "worker", "snapshot": heard.snapshot(), "age": 0.1},
        {"node": "w2@host", "role": "worker", "snapshot": deaf.snapshot(), "age": 0.1},
    ]
    console = Console(width=200, record=True)
    console.print(render(build_view(documents, interval=10)))
    table = console.export_text()
    assert "invalidation delivery p99" in table and "delivery max ms" in table
    [row_heard] = [line for line in table.splitlines() if "w1@host" in line]
    [row_deaf] = [line for line in table.splitlines() if "w2@host" in line]
    assert "12.30" in row_heard and "12.30" not in row_deaf


def test_every_latency_is_also_a_histogram_that_adds_across_exporters() -> None:
    from tiercel.core.metrics.registry import MetricsRegistry
    from tiercel.tasks.fleet_view import build_view
    from tiercel.workers.exporter import HISTOGRAM_BOUNDS, families

    registry = MetricsRegistry()
    for seconds in (0.002, 0.002, 0.03, 0.4, 7.0):
        registry.observe("tiercel_compute_seconds", seconds, task="t")
    view = build_view(
        [{"node": "w@h", "role": "worker", "snapshot": registry.snapshot()}], interval=10
    )
    exported = {family.name: family for family in families(view)}
    assert exported["tiercel_compute_seconds"].type == "summary"
    histogram = exported["tiercel_compute_seconds_histogram"]
    assert histogram.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in histogram.samples if s.name.endswith("_bucket")}
    assert len(buckets) == len(HISTOGRAM_BOUNDS) + 1
    assert buckets["0.001"] == 0 and buckets["0.0025"] == 2 and buckets["0.05"] == 3
    assert buckets["0.5"] == 4 and buckets["10.0"] == 5 and buckets["+Inf"] == 5
    [count] = [s.value for s in histogram.samples if s.name.endswith("_count")]
    assert count == 5


def test_miss_reasons_merge_across_processes_into_the_view_and_the_table() -> None:
    from rich.console import Console

    from tiercel.core.cache.multilevel import MultiLevelCache
    from tiercel.core.encoding.cache_key import CacheKey
    from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
    from tiercel.core.local.memory_level import MemoryLevel
    from tiercel.core.metrics.collectors import register_cache
    from tiercel.core.metrics.registry import MetricsRegistry
    from tiercel.tasks.fleet_view import build_view
    from tiercel.workers.exporter import families
    from tiercel.workers.stats import render

    documents = []
    caches = []
    for node in ("w1@host", "w2@host"):
        registry = MetricsRegistry()
        cache = MultiLevelCache(
            serializer=Serializer(MsgpackCodec()),
            levels=[MemoryLevel("l1", max_entries=1, policy="lru")],
        )
        caches.append(cache)
        register_cache(registry, cache)
        first, second = (CacheKey.build("ns", "sq", "1", d).value for d in ("a", "b"))
        cache.get_or_compute(first, compute=lambda: 1)
        cache.get_or_compute(second, compute=lambda: 2)  # evicts the first
        cache.get_or_compute(first, compute=lambda: 1)
        documents.append({"node": node, "role": "worker", "snapshot": registry.snapshot()})
    view = build_view(documents, interval=10)
    assert view["tasks"]["sq"]["misses"] == {"first_computation": 4, "evicted_local": 2}
    assert view["tasks"]["sq"]["duplicates"] == {}
    assert view["fleet"]["misses"] == {"first_computation": 4, "evicted_local": 2}
    assert all(
        p["misses"] == {"first_computation": 2, "evicted_local": 1} for p in view["processes"]
    )
    exported = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families(view)
        for sample in family.samples
    }
    assert exported[("tiercel_misses_total", (("reason", "evicted_local"), ("task", "sq")))] == 2
    console = Console(width=160, record=True)
    console.print(render(view))
    table = console.export_text()
    assert "computations by miss reason" in table
    assert "first_computation 4, evicted_local 2" in table
