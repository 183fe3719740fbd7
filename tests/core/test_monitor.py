"""PerformanceMonitor: the seed's timer API on the metrics registry, with a fake clock."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable

import pytest

from tiercel.core.metrics.monitor import MAX_PENDING_PER_NAME, TIMER_SECONDS, PerformanceMonitor
from tiercel.core.metrics.registry import MetricsRegistry
from tiercel.core.metrics.snapshots import merge_snapshots, sketch_of


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def monitor(clock: FakeClock) -> PerformanceMonitor:
    return PerformanceMonitor(MetricsRegistry(clock=clock))


def test_start_and_stop_by_token_and_by_name(monitor: PerformanceMonitor, clock: FakeClock) -> None:
    token = monitor.start_timer("load")
    clock.advance(0.25)
    assert monitor.stop_timer(token) == 0.25
    monitor.start_timer("load")
    clock.advance(0.75)
    assert monitor.stop_timer("load") == 0.75
    assert monitor.count("load") == 2
    assert monitor.average("load") == pytest.approx(0.5)


def test_overlapping_timers_of_one_name(monitor: PerformanceMonitor, clock: FakeClock) -> None:
    outer = monitor.start_timer("q")
    clock.advance(1.0)
    monitor.start_timer("q")
    clock.advance(2.0)
    assert monitor.stop_timer("q") == 2.0  # the newest running one
    assert monitor.stop_timer(outer) == 3.0
    with pytest.raises(ValueError, match="no timer named 'q' is running"):
        monitor.stop_timer("q")


def test_a_token_stops_once(monitor: PerformanceMonitor) -> None:
    token = monitor.start_timer("x")
    monitor.stop_timer(token)
    with pytest.raises(ValueError, match="already stopped"):
        monitor.stop_timer(token)
    assert monitor.count("x") == 1


def test_timers_started_and_never_stopped_are_bounded(monitor: PerformanceMonitor) -> None:
    tokens = [monitor.start_timer("leak") for _ in range(MAX_PENDING_PER_NAME + 10)]
    for _ in range(MAX_PENDING_PER_NAME):
        monitor.stop_timer("leak")
    with pytest.raises(ValueError, match="no timer named"):
        monitor.stop_timer("leak")
    monitor.stop_timer(tokens[0])  # a forgotten one still stops by its token
    assert monitor.count("leak") == MAX_PENDING_PER_NAME + 1


def test_average_and_percentiles(monitor: PerformanceMonitor) -> None:
    for ms in range(1, 101):
        monitor.record("op", ms / 1000)
    assert monitor.average("op") == pytest.approx(0.0505)
    assert monitor.p95("op") == pytest.approx(0.095, rel=0.01)
    assert monitor.percentile("op", 50) == pytest.approx(0.050, rel=0.01)
    assert monitor.percentile("op", 100) == 0.1
    stats = monitor.stats("op")
    assert stats["count"] == 100
    assert stats["min"] == 0.001 and stats["max"] == 0.1
    assert stats["p99"] == pytest.approx(0.099, rel=0.01)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        monitor.percentile("op", 101)


def test_no_data_reads_as_zero(monitor: PerformanceMonitor) -> None:
    assert monitor.average("none") == 0.0
    assert monitor.p95("none") == 0.0
    assert monitor.count("none") == 0
    assert monitor.stats("none")["p50"] == 0.0


def test_monitor_function_bare_and_named(monitor: PerformanceMonitor, clock: FakeClock) -> None:
    @monitor.monitor_function
    def bare(x: int) -> int:
        clock.advance(0.5)
        return x * 2

    @monitor.monitor_function("named")
    def other() -> None:
        clock.advance(1.5)
        raise RuntimeError("fails, still timed")

    assert bare(21) == 42
    assert bare.__name__ == "bare"
    with pytest.raises(RuntimeError):
        other()
    assert monitor.average(f"{__name__}.test_monitor_function_bare_and_named.<locals>.bare") == 0.5
    assert monitor.average("named") == 1.5


def test_measure_context_manager(monitor: PerformanceMonitor, clock: FakeClock) -> None:
    with monitor.measure("block") as timer:
        clock.advance(0.125)
    assert timer.elapsed == 0.125
    assert monitor.p95("block") == 0.125
    assert monitor.names() == ["block"]


def test_monitor_function_times_a_coroutine_until_it_finishes(
    monitor: PerformanceMonitor, clock: FakeClock
) -> None:
    @monitor.monitor_function("fetch")
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)  # the loop runs other work; the clock moves meanwhile
        clock.advance(0.25)
        await asyncio.sleep(0)
        return x + 1

    @monitor.monitor_function("broken")
    async def broken() -> None:
        await asyncio.sleep(0)
        clock.advance(0.5)
        raise RuntimeError("fails after awaiting, still timed")

    assert inspect.iscoroutinefunction(fetch)
    assert fetch.__name__ == "fetch"
    pending = fetch(1)
    assert monitor.count("fetch") == 0  # creating the coroutine is not the call
    assert asyncio.run(pending) == 2
    assert monitor.count("fetch") == 1
    assert monitor.average("fetch") == 0.25
    with pytest.raises(RuntimeError):
        asyncio.run(broken())
    assert monitor.average("broken") == 0.5


def test_monitor_function_keeps_a_plain_function_plain(monitor: PerformanceMonitor) -> None:
    @monitor.monitor_function
    def plain() -> str:
        return "value"

    assert not inspect.iscoroutinefunction(plain)
    assert plain() == "value"


def test_measure_and_timers_around_awaits(monitor: PerformanceMonitor, clock: FakeClock) -> None:
    async def work() -> float:
        token = monitor.start_timer("awaited")
        async with monitor.measure("block") as timer:
            await asyncio.sleep(0)
            clock.advance(0.125)
        await asyncio.sleep(0)
        clock.advance(0.375)
        monitor.stop_timer(token)
        return timer.elapsed

    assert asyncio.run(work()) == 0.125
    assert monitor.average("block") == 0.125
    assert monitor.average("awaited") == 0.5


def test_timings_reach_snapshots_and_merge_fleet_wide(clock: FakeClock) -> None:
    def wall_clock(start: float) -> Callable[[], float]:
        return lambda: start

    monitors = [
        PerformanceMonitor(MetricsRegistry(clock=clock, wall_clock=wall_clock(start)))
        for start in (1.0, 2.0)
    ]
    for i, monitor in enumerate(monitors):
        for ms in range(1, 51):
            monitor.record("op", (ms + 50 * i) / 1000)
    fleet = merge_snapshots(m.registry.snapshot() for m in monitors)
    merged = sketch_of(fleet, TIMER_SECONDS, timer="op")
    assert merged is not None and merged.count == 100
    # The fleet p95 is the p95 of all 100 durations, not an average of two p95s.
    assert merged.quantile(0.95) == pytest.approx(0.095, rel=0.01)


def test_default_registry_and_clock() -> None:
    monitor = PerformanceMonitor()
    with monitor.measure("real"):
        pass
    assert monitor.count("real") == 1
    assert monitor.average("real") >= 0.0
