"""Accuracy and overhead of tiercel's metrics (registry and sketches in tiercel.core.metrics).

Accuracy: four spawned processes each record 25,000 lognormal latencies (a
different median per process, as workers under different load see) in their
own :class:`~tiercel.core.metrics.registry.MetricsRegistry` and send back a JSON snapshot; the
merged fleet p99 is compared with the exact p99 of all 100,000 values (target:
within 1%). The naive alternative, the mean of the per-process p99s, is shown
beside it.

Overhead, per call: ``inc`` and ``observe`` against prometheus_client's
labelled counter and histogram, and the sketch's ``add`` against ddsketch's.
Then the figure the issue sets a budget for: an L1 hit of a cached function
with tiercel's accounting for it (the levels' own hit counters, pulled at
snapshot time, plus the request latency of one hit in 64, recorded with weight
64) against the same hit without metrics; target <= 1.03x. Timing every hit
with ``inc`` + ``observe`` is shown too, as the reason for sampling.

Run: ``python -m bench.metrics [--quick]`` (under 30 s; ``--quick`` ~5 s).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import random
import statistics
import sys
import time
from typing import Any

from bench._harness import Row, figure_row, per_call_us, ratio_row, side_by_side
from tiercel.core.cache.memoize import cached
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
from tiercel.core.local.memory_level import MemoryLevel
from tiercel.core.metrics.collectors import register_cache
from tiercel.core.metrics.names import CACHE_HITS, REQUEST_SECONDS
from tiercel.core.metrics.registry import MetricsRegistry
from tiercel.core.metrics.sketches import LatencySketch
from tiercel.core.metrics.snapshots import merge_snapshots, sketch_of
from tiercel.core.tier.generations import Generations

PROCESSES = 4
SAMPLES_PER_PROCESS = 25_000
#: One L1 hit in this many has its latency recorded (with this weight).
SAMPLE_EVERY = 64


def _samples(index: int, n: int) -> list[float]:
    """Process ``index``'s latencies: lognormal, median e^(-7 + 0.6 * index) seconds."""
    rng = random.Random(1000 + index)
    return [rng.lognormvariate(-7.0 + 0.6 * index, 1.2) for _ in range(n)]


def _child_snapshot(args: tuple[int, int]) -> str:
    """Runs in a spawned process: record its latencies, return the registry's snapshot."""
    index, n = args
    registry = MetricsRegistry()
    for value in _samples(index, n):
        registry.observe(REQUEST_SECONDS, value, source="computed")
    return json.dumps(registry.snapshot())


def bench_fleet_p99(per_process: int) -> list[Row]:
    started = time.perf_counter()
    jobs = [(i, per_process) for i in range(PROCESSES)]
    with multiprocessing.get_context("spawn").Pool(PROCESSES) as pool:
        snapshots = [json.loads(text) for text in pool.map(_child_snapshot, jobs)]
    fleet = merge_snapshots(snapshots)
    merged = sketch_of(fleet, REQUEST_SECONDS)
    assert merged is not None
    values = sorted(v for i in range(PROCESSES) for v in _samples(i, per_process))
    exact = values[math.floor(0.99 * (len(values) - 1))]
    estimate = merged.quantile(0.99)
    assert estimate is not None
    error = abs(estimate - exact) / exact * 100
    per_process_p99 = []
    for snapshot in snapshots:
        sketch = sketch_of(snapshot, REQUEST_SECONDS)
        assert sketch is not None
        per_process_p99.append(sketch.quantile(0.99) or 0.0)
    naive_error = abs(statistics.fmean(per_process_p99) - exact) / exact * 100
    note = (
        f"{len(values):,} values from {PROCESSES} processes; exact p99 {exact * 1e3:.3f} ms, "
        f"merged {estimate * 1e3:.3f} ms; {time.perf_counter() - started:.1f} s"
    )
    return [
        figure_row(
            "fleet p99 error, merged sketches",
            error,
            "%",
            target="<= 1%",
            met=error <= 1.0,
            note=note,
        ),
        figure_row(
            "fleet p99 error, mean of per-process p99s (not done)",
            naive_error,
            "%",
            note="why sketches merge instead of averaging percentiles",
        ),
    ]


def bench_calls(calls: int, repeats: int) -> list[Row]:
    from ddsketch import DDSketch
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = MetricsRegistry()
    peer_registry = CollectorRegistry()
    peer_counter = Counter("bench_hits", "hits", ["level"], registry=peer_registry)
    peer_histogram = Histogram("bench_seconds", "latency", ["source"], registry=peer_registry)
    rows: list[Row] = []

    mine, theirs = side_by_side(
        lambda: registry.inc("hits", level="l1"),
        lambda: peer_counter.labels(level="l1").inc(),
        calls=calls,
        repeats=repeats,
    )
    rows.append(
        ratio_row(
            "counter inc, labelled: registry.inc()",
            mine,
            "prometheus_client Counter.labels().inc()",
            theirs,
        )
    )
    handle = registry.counter("hits", level="l1")
    child = peer_counter.labels(level="l1")
    mine, theirs = side_by_side(handle.inc, child.inc, calls=calls, repeats=repeats)
    rows.append(
        ratio_row("counter inc, bound handle", mine, "prometheus_client child.inc()", theirs)
    )
    mine, theirs = side_by_side(
        lambda: registry.observe(REQUEST_SECONDS, 0.0042, source="l1"),
        lambda: peer_histogram.labels(source="l1").observe(0.0042),
        calls=calls,
        repeats=repeats,
    )
    rows.append(
        ratio_row(
            "latency observe, labelled: registry.observe()",
            mine,
            "prometheus_client Histogram.labels().observe()",
            theirs,
            note="a fixed-bucket histogram: percentiles not within 1%",
        )
    )
    ours_sketch, their_sketch = LatencySketch(), DDSketch(0.01)
    mine, theirs = side_by_side(
        lambda: ours_sketch.add(0.0042),
        lambda: their_sketch.add(0.0042),
        calls=calls,
        repeats=repeats,
    )
    rows.append(ratio_row("sketch add", mine, "ddsketch DDSketch.add (no lock)", theirs))
    table: dict[tuple[str, tuple[()]], int] = {("hits", ()): 0}
    key = ("hits", ())

    def bare() -> None:
        table[key] = table[key] + 1

    rows.append(
        figure_row("for scale: bare dict get + add, no lock", per_call_us(bare, calls), "us")
    )
    return rows


def _cached_hit() -> tuple[Any, MultiLevelCache]:
    cache = MultiLevelCache(
        serializer=Serializer(MsgpackCodec()),
        levels=[MemoryLevel("memory", max_entries=4096, ttl=300)],
    )

    @cached(cache, ttl=300, generations=Generations(None))
    def report(a: int, b: str) -> dict[str, Any]:
        return {"id": a, "title": b}

    report(1, "x")
    return report, cache


def bench_l1_hit(calls: int, repeats: int) -> list[Row]:
    plain, _ = _cached_hit()
    measured, cache = _cached_hit()
    registry = MetricsRegistry()
    register_cache(registry, cache)  # hits, misses, evictions, bytes: pulled at snapshot
    registry.register_counter(CACHE_HITS, lambda: measured.hot_hits, level="memo")
    observe = registry.observe
    clock = time.perf_counter
    lookup = measured.lookup
    countdown = SAMPLE_EVERY

    def sampled() -> None:
        # What the L1 hit path adds: a countdown, and one timed hit in SAMPLE_EVERY.
        nonlocal countdown
        countdown -= 1
        if countdown:
            lookup(1, "x")
            return
        countdown = SAMPLE_EVERY
        started = clock()
        lookup(1, "x")
        observe(REQUEST_SECONDS, clock() - started, SAMPLE_EVERY, source="memory")

    def memo_sampled() -> None:
        nonlocal countdown
        countdown -= 1
        if countdown:
            measured(1, "x")
            return
        countdown = SAMPLE_EVERY
        started = clock()
        measured(1, "x")
        observe(REQUEST_SECONDS, clock() - started, SAMPLE_EVERY, source="memo")

    def every_hit() -> None:
        started = clock()
        lookup(1, "x")
        registry.inc("tiercel_requests_total", source="memory")
        observe(REQUEST_SECONDS, clock() - started, 1, source="memory")

    spare = SAMPLE_EVERY

    def accounting_only() -> None:
        # The same accounting around no hit at all: its cost alone.
        nonlocal spare
        spare -= 1
        if spare:
            return
        spare = SAMPLE_EVERY
        started = clock()
        observe(REQUEST_SECONDS, clock() - started, SAMPLE_EVERY, source="memory")

    def nothing() -> None:
        return

    plain_lookup = plain.lookup

    def baseline() -> None:
        plain_lookup(1, "x")

    hit_calls = max(1, calls // 2)
    mine, theirs = side_by_side(sampled, baseline, calls=hit_calls, repeats=2 * repeats + 1)
    hit_us = statistics.median(theirs)
    rows = [
        ratio_row(
            f"L1 hit (key + memory level) + metrics: counters pulled, 1/{SAMPLE_EVERY} timed",
            mine,
            "the same L1 hit, no metrics",
            theirs,
            note="A/B of the whole hit; shared CPUs make single runs noisy",
        )
    ]
    with_accounting, bare = side_by_side(
        accounting_only, nothing, calls=calls * 2, repeats=2 * repeats + 1
    )
    added = [a - b for a, b in zip(with_accounting, bare, strict=True)]
    share = max(0.0, statistics.median(added)) / hit_us * 100
    rows.append(
        figure_row(
            "L1-hit accounting alone, share of the L1 hit",
            share,
            "%",
            target="<= 3%",
            met=share <= 3.0,
            spread=(min(added) / hit_us * 100, max(added) / hit_us * 100),
            note=f"adds {statistics.median(added):.3f} us to a {hit_us:.2f} us hit",
        )
    )
    mine, theirs = side_by_side(every_hit, baseline, calls=hit_calls, repeats=repeats)
    rows.append(
        ratio_row(
            "L1 hit + inc + observe on every hit (not done)",
            mine,
            "the same L1 hit, no metrics",
            theirs,
            note="why the hit path samples",
        )
    )
    mine, theirs = side_by_side(memo_sampled, lambda: plain(1, "x"), calls=calls, repeats=repeats)
    rows.append(
        ratio_row(
            f"hot-memo hit + 1/{SAMPLE_EVERY} timed (not done)",
            mine,
            "the same memo hit, no metrics",
            theirs,
            note="memo hits are only counted (hot_hits, pulled): +0 us",
        )
    )
    snapshot_us = per_call_us(registry.snapshot, 200)
    rows.append(
        figure_row(
            "snapshot with the cache registered",
            snapshot_us,
            "us",
            note=f"{len(json.dumps(registry.snapshot()))} bytes of JSON",
        )
    )
    return rows


def bench_task_wiring(calls: int, repeats: int) -> list[Row]:
    """The worker's wiring (tiercel.tasks.recorder) on the L1 hit path, on vs off, side by side.

    ``Runtime.call`` (a cached task's body) on an L1 hit, bare and wrapped by
    :class:`tiercel.tasks.recorder.CallRecorder` (a count by task and source, saved
    seconds, 1 in 16 timed); and a memo hit with the registry fully wired
    (register_cache, recorder) against none: the memo path records nothing.
    """
    from tiercel.core.cache.memoize import CachedFunction
    from tiercel.tasks.recorder import CallRecorder

    def build() -> tuple[Any, MultiLevelCache, Generations]:
        cache = MultiLevelCache(
            serializer=Serializer(MsgpackCodec()),
            levels=[MemoryLevel("memory", max_entries=4096, ttl=300)],
        )
        spec = CachedFunction(lambda a, b: {"id": a, "title": b}, ttl=300, name="bench.report")
        generations = Generations(None)
        spec.call(cache, generations, "bench", (1, "x"), {})
        return spec, cache, generations

    spec, cache, generations = build()

    def call(spec: Any, args: Any, kwargs: Any) -> Any:
        return spec.call(cache, generations, "bench", args, kwargs)

    registry = MetricsRegistry()
    register_cache(registry, cache)
    recorder = CallRecorder(registry)
    clock = time.perf_counter

    def wired(spec: Any, args: Any, kwargs: Any) -> Any:  # as Runtime.call records
        started = clock()
        found = call(spec, args, kwargs)
        recorder.record(spec.name, found.source, clock() - started, found.compute_seconds)
        return found

    rows = []
    mine, theirs = side_by_side(
        lambda: wired(spec, (1, "x"), {}),
        lambda: call(spec, (1, "x"), {}),
        calls=max(1, calls // 2),
        repeats=2 * repeats + 1,
    )
    rows.append(
        ratio_row(
            "task body L1 hit (Runtime.call) + worker wiring",
            mine,
            "the same call, no wiring",
            theirs,
            note="count by task+source, saved seconds, 1 in 16 timed",
        )
    )
    plain, _ = _cached_hit()
    measured, memo_cache = _cached_hit()
    wired_registry = MetricsRegistry()
    register_cache(wired_registry, memo_cache)
    CallRecorder(wired_registry)
    mine, theirs = side_by_side(
        lambda: measured(1, "x"), lambda: plain(1, "x"), calls=calls, repeats=2 * repeats + 1
    )
    rows.append(
        ratio_row(
            "memo/L1 hit, worker wiring on",
            mine,
            "wiring off",
            theirs,
            target=1.03,
            note="counters are pulled at snapshot time: +0 per hit",
        )
    )
    return rows


def run(quick: bool = False) -> list[Row]:
    """Every metrics benchmark; ``quick`` shrinks loop counts for a smoke run."""
    calls = 20_000 if quick else 100_000
    repeats = 3 if quick else 5
    per_process = SAMPLES_PER_PROCESS
    rows = bench_fleet_p99(per_process)
    rows += bench_calls(calls, repeats)
    rows += bench_l1_hit(calls, repeats)
    rows += bench_task_wiring(calls, repeats)
    return rows


if __name__ == "__main__":
    from bench.report import print_table

    began = time.monotonic()
    print_table(run(quick="--quick" in sys.argv[1:]), title="tiercel metrics")
    print(f"({time.monotonic() - began:.1f} s)")
