"""MetricsRegistry: counters, gauges, sketches, bounds, snapshots and their merge."""

from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.encoding.codecs import JsonCodec, Serializer
from tiercel.core.local.memory_level import MemoryLevel
from tiercel.core.metrics.collectors import cache_samples, register_cache
from tiercel.core.metrics.names import (
    BREAKER_STATE,
    CACHE_BYTES,
    CACHE_ENTRIES,
    CACHE_HITS,
    CACHE_MISSES,
    COMPUTATIONS,
    METRICS_COLLECTOR_ERRORS,
    METRICS_OVERFLOW,
    REDIS_ERRORS,
    REQUEST_SECONDS,
    SINGLEFLIGHT_JOINS,
)
from tiercel.core.metrics.registry import OVERFLOW_LABELS, MetricsRegistry
from tiercel.core.metrics.samples import Sample
from tiercel.core.metrics.snapshots import counter_total, empty_snapshot, merge_snapshots, sketch_of


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


_wall = itertools.count(1_700_000_000)


def make_registry(**kwargs: Any) -> MetricsRegistry:
    """A registry with its own wall-clock start, so each has a distinct process id."""
    start = float(next(_wall))
    return MetricsRegistry(wall_clock=lambda: start, **kwargs)


def find(snapshot: dict[str, Any], kind: str, name: str, **labels: str) -> dict[str, Any]:
    matches = [s for s in snapshot[kind] if s["name"] == name and s["labels"] == labels]
    assert len(matches) == 1, (kind, name, labels, snapshot[kind])
    match: dict[str, Any] = matches[0]
    return match


# -- counters ------------------------------------------------------------------------------


def test_inc_adds_per_label_set_in_any_label_order() -> None:
    registry = make_registry()
    registry.inc("requests")
    registry.inc("requests", 2)
    registry.inc("hits", level="l1", kind="memory")
    registry.inc("hits", 3, kind="memory", level="l1")
    registry.inc("saved", 0.25)
    assert registry.counter_value("requests") == 3
    assert registry.counter_value("hits", level="l1", kind="memory") == 4
    assert registry.counter_value("saved") == 0.25
    assert registry.counter_value("absent") == 0


def test_name_and_value_may_be_label_names() -> None:
    registry = make_registry()
    registry.inc("calls", 1, name="f", value="v")
    assert registry.counter_value("calls", name="f", value="v") == 1


def test_counter_handle_skips_label_work() -> None:
    registry = make_registry()
    handle = registry.counter("hits", level="l1")
    handle.inc()
    handle.inc(4)
    registry.inc("hits", level="l1")
    assert handle.value == 6
    assert registry.counter_value("hits", level="l1") == 6


def test_counters_only_grow() -> None:
    with pytest.raises(ValueError, match="only grows"):
        make_registry().inc("x", -1)


def test_a_name_is_one_kind_and_labels_are_strings() -> None:
    registry = make_registry()
    registry.inc("x")
    with pytest.raises(ValueError, match="is a counter"):
        registry.observe("x", 1.0)
    with pytest.raises(ValueError, match="is a counter"):
        registry.set_gauge("x", 1.0)
    with pytest.raises(TypeError, match="must be a str"):
        registry.inc("y", worker=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty"):
        registry.inc("")


def test_threads_lose_no_increments() -> None:
    registry = make_registry()

    def work() -> None:
        for _ in range(10_000):
            registry.inc("n", shard="a")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert registry.counter_value("n", shard="a") == 80_000


# -- bounds --------------------------------------------------------------------------------


def test_label_sets_beyond_the_bound_go_to_one_counted_overflow_series() -> None:
    registry = make_registry(max_series=3)
    for i in range(10):
        registry.inc("by_user", user=f"u{i}")
    for i in range(5):
        registry.observe("latency", 0.001, user=f"u{i}")
    assert registry.label_sets("by_user") == [
        OVERFLOW_LABELS,
        {"user": "u0"},
        {"user": "u1"},
        {"user": "u2"},
    ]
    assert registry.counter_value("by_user", **OVERFLOW_LABELS) == 7
    assert registry.counter_value(METRICS_OVERFLOW, metric="by_user") == 7
    assert registry.counter_value(METRICS_OVERFLOW, metric="latency") == 2
    overflow = registry.get_sketch("latency", **OVERFLOW_LABELS)
    assert overflow is not None and overflow.count == 2
    # Known series keep working once the bound is reached.
    registry.inc("by_user", user="u1")
    assert registry.counter_value("by_user", user="u1") == 2
    snapshot = registry.snapshot()
    assert len([c for c in snapshot["counters"] if c["name"] == "by_user"]) == 4


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="max_series"):
        MetricsRegistry(max_series=0)
    with pytest.raises(ValueError, match="relative_accuracy"):
        MetricsRegistry(relative_accuracy=2.0)


# -- gauges --------------------------------------------------------------------------------


def test_gauges_set_and_callbacks_read_at_snapshot() -> None:
    registry = make_registry()
    registry.set_gauge("queue", 5, queue="a")
    registry.set_gauge("queue", 7, queue="a")
    depth = [1.0]
    registry.register_gauge("pool_idle", lambda: depth[0], pool="db")
    depth[0] = 4.0
    snapshot = registry.snapshot()
    assert find(snapshot, "gauges", "queue", queue="a")["value"] == 7
    assert find(snapshot, "gauges", "pool_idle", pool="db")["value"] == 4.0


def test_a_failing_callback_is_logged_counted_and_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = make_registry()

    def broken() -> float:
        raise RuntimeError("boom")

    def broken_collector() -> list[Sample]:
        raise RuntimeError("boom")

    registry.register_gauge("bad", broken)
    registry.register_collector(broken_collector)
    registry.set_gauge("good", 1.0)
    with caplog.at_level(logging.WARNING, logger="tiercel.core.metrics.registry"):
        snapshot = registry.snapshot()
    assert find(snapshot, "gauges", "good")["value"] == 1.0
    assert not [g for g in snapshot["gauges"] if g["name"] == "bad"]
    assert find(snapshot, "counters", METRICS_COLLECTOR_ERRORS)["value"] == 2
    assert "failed" in caplog.text
    assert counter_total(registry.snapshot(), METRICS_COLLECTOR_ERRORS) == 4


# -- sketches and timers -------------------------------------------------------------------


def test_observe_timer_and_timed_use_the_injected_clock() -> None:
    clock = FakeClock()
    registry = MetricsRegistry(clock=clock)
    registry.observe(REQUEST_SECONDS, 0.5, source="l1")
    registry.observe(REQUEST_SECONDS, 0.5, 9, source="l1")  # one sample standing for 9
    with registry.timer(REQUEST_SECONDS, source="computed") as timer:
        clock.advance(2.0)
    assert timer.elapsed == 2.0

    @registry.timed("work_seconds")
    def work(seconds: float) -> str:
        clock.advance(seconds)
        return "done"

    assert work(3.0) == "done"
    assert work.__name__ == "work"
    l1 = registry.get_sketch(REQUEST_SECONDS, source="l1")
    assert l1 is not None and l1.count == 10 and l1.sum == pytest.approx(5.0)
    computed = registry.get_sketch(REQUEST_SECONDS, source="computed")
    assert computed is not None and computed.max == 2.0
    timed = registry.get_sketch("work_seconds")
    assert timed is not None and timed.count == 1 and timed.max == 3.0


def test_failing_blocks_are_timed_too() -> None:
    clock = FakeClock()
    registry = MetricsRegistry(clock=clock)

    @registry.timed("f_seconds")
    def fail() -> None:
        clock.advance(1.0)
        raise KeyError("x")

    with pytest.raises(KeyError):
        fail()
    with pytest.raises(ValueError), registry.timer("block_seconds"):
        clock.advance(0.5)
        raise ValueError("y")
    f_sketch = registry.get_sketch("f_seconds")
    block = registry.get_sketch("block_seconds")
    assert f_sketch is not None and f_sketch.max == 1.0
    assert block is not None and block.max == 0.5


def test_get_sketch_never_creates() -> None:
    registry = make_registry()
    assert registry.get_sketch("nothing") is None
    assert registry.label_sets("nothing") == []


# -- snapshots -----------------------------------------------------------------------------


def test_snapshot_is_json_and_describes_the_process() -> None:
    registry = make_registry()
    registry.inc("hits", level="l1")
    registry.set_gauge("entries", 3, level="l1")
    registry.observe(REQUEST_SECONDS, 0.002, source="l1")
    snapshot = registry.snapshot()
    assert json.loads(json.dumps(snapshot)) == snapshot
    (process,) = snapshot["processes"]
    assert process["pid"] == os.getpid()
    assert find(snapshot, "counters", "hits", level="l1")["value"] == 1
    gauge = find(snapshot, "gauges", "entries", level="l1")
    assert gauge == {
        "name": "entries",
        "labels": {"level": "l1"},
        "value": 3,
        "by_process": {process["id"]: 3},
    }
    sketch = sketch_of(snapshot, REQUEST_SECONDS, source="l1")
    assert sketch is not None and sketch.count == 1


def test_reset_zeroes_and_keeps_handles() -> None:
    registry = make_registry()
    handle = registry.counter("c")
    handle.inc(5)
    registry.set_gauge("g", 1)
    sketch = registry.sketch("s")
    sketch.add(1.0)
    registry.reset()
    assert handle.value == 0
    assert sketch.count == 0
    assert registry.snapshot()["gauges"] == []
    handle.inc()
    sketch.add(2.0)
    snapshot = registry.snapshot()
    assert find(snapshot, "counters", "c")["value"] == 1
    assert sketch_of(snapshot, "s") is not None


def registry_with(hits: int, entries: float, latencies: list[float]) -> MetricsRegistry:
    registry = make_registry()
    registry.inc(CACHE_HITS, hits, level="l1")
    registry.set_gauge(CACHE_ENTRIES, entries, level="l1")
    for latency in latencies:
        registry.observe(REQUEST_SECONDS, latency, source="redis")
    return registry


def test_merge_adds_counters_keeps_gauges_per_process_and_merges_sketches() -> None:
    a = registry_with(3, 10, [0.001, 0.002]).snapshot()
    b = registry_with(4, 20, [0.004]).snapshot()
    b["taken_at"] += 5
    merged = merge_snapshots([a, b])
    assert json.loads(json.dumps(merged)) == merged
    assert [p["id"] for p in merged["processes"]] == sorted(
        [a["processes"][0]["id"], b["processes"][0]["id"]]
    )
    assert merged["taken_at"] == b["taken_at"]
    assert find(merged, "counters", CACHE_HITS, level="l1")["value"] == 7
    gauge = find(merged, "gauges", CACHE_ENTRIES, level="l1")
    assert gauge["value"] == 30
    assert sorted(gauge["by_process"].values()) == [10, 20]
    sketch = sketch_of(merged, REQUEST_SECONDS)
    assert sketch is not None and sketch.count == 3 and sketch.max == 0.004


def test_merge_is_associative_and_commutative_and_has_an_identity() -> None:
    a = registry_with(1, 1, [0.001] * 5).snapshot()
    b = registry_with(2, 2, [0.01, 0.02]).snapshot()
    c = registry_with(3, 3, [1.0, 2.0, 3.0]).snapshot()
    flat = merge_snapshots([a, b, c])
    assert merge_snapshots([merge_snapshots([a, b]), c]) == flat
    assert merge_snapshots([a, merge_snapshots([b, c])]) == flat
    assert merge_snapshots([c, a, b]) == flat
    assert merge_snapshots([flat, empty_snapshot()]) == flat
    assert merge_snapshots([]) == empty_snapshot()


def test_merge_refuses_a_process_twice_and_foreign_data() -> None:
    snapshot = registry_with(1, 1, []).snapshot()
    with pytest.raises(ValueError, match="appears in two snapshots"):
        merge_snapshots([snapshot, snapshot])
    with pytest.raises(ValueError, match="format"):
        merge_snapshots([{"format": 0}])


def test_counter_total_and_sketch_of_sum_over_matching_labels() -> None:
    registry = make_registry()
    registry.inc(CACHE_HITS, 2, level="l1")
    registry.inc(CACHE_HITS, 5, level="l2")
    registry.observe(REQUEST_SECONDS, 0.001, source="l1")
    registry.observe(REQUEST_SECONDS, 0.1, source="redis")
    snapshot = registry.snapshot()
    assert counter_total(snapshot, CACHE_HITS) == 7
    assert counter_total(snapshot, CACHE_HITS, level="l2") == 5
    assert counter_total(snapshot, CACHE_HITS, level="l9") == 0
    both = sketch_of(snapshot, REQUEST_SECONDS)
    assert both is not None and both.count == 2
    assert sketch_of(snapshot, REQUEST_SECONDS, source="l9") is None


# -- pulling the cache's own counters ------------------------------------------------------


def test_cache_samples_reads_levels_tier_and_cache_counters() -> None:
    level = MemoryLevel("l1", max_entries=10)
    level.set("k", "v")
    level.get("k")
    level.get("absent")
    stats = {
        "levels": {"l1": level.stats},
        "redis": {"hits": 1, "misses": 2, "errors": 3, "breaker": "open", "breaker_opened": 1},
        "computed": 4,
        "compute_errors": 0,
        "joined": 5,
    }
    by_name = {(s.name, tuple(s.labels.items())): s for s in cache_samples(stats)}
    assert by_name[(CACHE_HITS, (("level", "l1"),))].value == 1
    assert by_name[(CACHE_MISSES, (("level", "l1"),))].value == 1
    assert by_name[(CACHE_ENTRIES, (("level", "l1"),))].kind == "gauge"
    assert by_name[(CACHE_BYTES, (("level", "l1"),))].value == level.nbytes
    assert by_name[(REDIS_ERRORS, ())].value == 3
    assert by_name[(BREAKER_STATE, ())].value == 2
    assert by_name[(COMPUTATIONS, ())].value == 4
    assert by_name[(SINGLEFLIGHT_JOINS, ())].value == 5


def test_register_cache_pulls_a_real_cache_at_snapshot_time() -> None:
    cache = MultiLevelCache(serializer=Serializer(JsonCodec()))
    level = cache.add_level("l1", ttl=60.0, max_size=100)
    registry = make_registry()
    registry.inc(CACHE_HITS, 10, level="l1")  # pushed figures add to pulled ones
    collector: Callable[[], Any] = register_cache(registry, cache)
    level.set("k", 1)
    for _ in range(3):
        level.get("k")
    snapshot = registry.snapshot()
    assert find(snapshot, "counters", CACHE_HITS, level="l1")["value"] == 13
    assert find(snapshot, "gauges", CACHE_ENTRIES, level="l1")["value"] == 1
    registry.unregister_collector(collector)
    assert find(registry.snapshot(), "counters", CACHE_HITS, level="l1")["value"] == 10


def test_register_cache_holds_the_cache_weakly() -> None:
    registry = make_registry()
    cache = MultiLevelCache(serializer=Serializer(JsonCodec()))
    cache.add_level("l1", ttl=60.0, max_size=100)
    register_cache(registry, cache)
    del cache
    assert registry.snapshot()["counters"] == []


# -- processes -----------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_from_zero() -> None:
    registry = make_registry()
    registry.inc("c", 5)
    registry.sketch("s").add(1.0)
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads; the child
        # here only touches the registry, whose locks are re-created after fork.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_fd)
            counts = (registry.counter_value("c"), registry.sketch("s").count)
            registry.inc("c")
            os.write(write_fd, json.dumps([*counts, registry.counter_value("c")]).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        child = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert child == [0, 0, 1]
    assert registry.counter_value("c") == 5


def test_register_counter_pulls_a_count_the_component_keeps() -> None:
    registry = make_registry()
    hot_hits = [0]
    registry.register_counter(CACHE_HITS, lambda: hot_hits[0], level="memo")
    registry.inc(CACHE_HITS, 2, level="memo")
    hot_hits[0] = 40
    snapshot = registry.snapshot()
    assert find(snapshot, "counters", CACHE_HITS, level="memo")["value"] == 42
    registry.reset()  # the component's own count is not the registry's to zero
    assert counter_total(registry.snapshot(), CACHE_HITS, level="memo") == 40
    assert registry.label_sets(CACHE_HITS) == [{"level": "memo"}]
