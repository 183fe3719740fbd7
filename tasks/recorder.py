"""What one process's metrics registry counts of its cached calls, fleet, refresher and pools.

:class:`CallRecorder` is told of every cached call (``Runtime.call``) and
keeps counts and compute-seconds-saved in plain dicts the registry pulls at
snapshot time; :func:`fleet_samples` and :func:`pool_samples` build the
collectors the registry pulls for the rest.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from tiercel.core.cache.coordinator import FleetCoordinator
from tiercel.core.cache.freshness import BackgroundRefresher
from tiercel.core.cache.hot_memo import HotMemo
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.metrics.names import (
    COMPUTE_SECONDS,
    COMPUTE_SECONDS_SAVED,
    POOL_IDLE,
    POOL_IN_USE,
    POOL_TIMEOUTS,
    REQUEST_SECONDS,
)
from tiercel.core.metrics.registry import MetricsRegistry
from tiercel.core.metrics.samples import Sample
from tiercel.tasks.metrics import (
    CLIENT_REQUESTS,
    COORDINATOR_ACTIVE,
    COORDINATOR_EVENTS,
    MAX_TASK_SERIES,
    MEMORY_USED,
    REFRESHES,
    REQUESTS,
    SAMPLE_EVERY,
)
from tiercel.tasks.pools import PoolRegistry

#: Fleet figures that are gauges (how many now); the others count events.
ACTIVE_FIGURES = frozenset({"renewing", "waiting"})


class CallRecorder:
    """Counts the cached task body's calls by task and source; times one in ``sample_every``.

    Counts and compute-seconds-saved live in plain dicts the registry pulls at
    snapshot time. Saved seconds: a Redis read knows the value's compute time;
    a local hit (or a join) gets the task's running average compute time.

    A task's hot memo (:meth:`track`) counts its own answers; each snapshot adds
    the ones since the last to the task's count under the memo's level, as
    :meth:`record` would have one by one, and the memo times one answer in
    ``sample_every`` into the same latency sketch.
    """

    def __init__(
        self, registry: MetricsRegistry, *, sample_every: int = SAMPLE_EVERY, client: bool = False
    ) -> None:
        self.registry = registry
        #: A client process: its counts are also reported as ``CLIENT_REQUESTS``.
        self.client = client
        self.sample_every = sample_every
        self._countdown = sample_every
        self._counts: dict[tuple[str, str], int] = {}
        self._saved: dict[str, float] = {}
        self._compute: dict[str, tuple[float, int]] = {}
        self._last = threading.local()
        #: [task, memo, hits already counted] per tracked memo.
        self._tracked: list[list[Any]] = []
        self._tracked_lock = threading.Lock()
        registry.register_collector(self._collect)

    def track(self, task: str, memo: HotMemo) -> None:
        """Count ``memo``'s answers as calls of ``task`` from the memo's level, and time
        one in ``sample_every`` with that weight, as :meth:`record` times calls."""
        every = self.sample_every
        # The series' own sketch: half the cost of an observe() that finds it by name.
        sketch = self.registry.sketch(REQUEST_SECONDS, source=memo.source)

        def sample(elapsed: float) -> None:
            sketch.add(elapsed, every)

        memo.time_answers(sample, every)
        with self._tracked_lock:
            self._tracked.append([task, memo, 0])

    def local_answer(self, task: str, source: str) -> tuple[str, str, float]:
        """What :meth:`last` says of a call of ``task`` a hot memo answered from
        ``source`` (already counted): the task's average compute seconds saved."""
        total, n = self._compute.get(task, (0.0, 0))
        return task, source, total / n if n else 0.0

    def _flush(self) -> None:
        with self._tracked_lock:
            tracked = list(self._tracked)
        for item in tracked:
            task, memo, counted = item
            hits = memo.hits
            if hits > counted:
                item[2] = hits
                self._count(task, memo.source, hits - counted)

    def _add(self, task: str, source: str, calls: int) -> str:
        """Count ``calls`` of ``task`` from ``source``; returns the task's series name
        (``_other`` once :data:`MAX_TASK_SERIES` series exist)."""
        key = (task, source)
        counts = self._counts
        count = counts.get(key)
        if count is None:
            if len(counts) >= MAX_TASK_SERIES:
                task = "_other"
                key = (task, source)
            count = counts.get(key, 0)
        counts[key] = count + calls
        return task

    def _count(self, task: str, source: str, calls: int) -> None:
        # Local hits: counted, each saving the task's average compute time.
        task = self._add(task, source, calls)
        total, n = self._compute.get(task, (0.0, 0))
        if n and total:
            self._saved[task] = self._saved.get(task, 0.0) + total / n * calls

    def record(self, task: str, source: str, elapsed: float, compute_seconds: float) -> None:
        """Account one call of ``task`` answered from ``source`` in ``elapsed`` seconds."""
        task = self._add(task, source, 1)
        if source == "computed":
            total, n = self._compute.get(task, (0.0, 0))
            self._compute[task] = (total + elapsed, n + 1)
            self.registry.observe(COMPUTE_SECONDS, elapsed, task=task)
            saved = 0.0
        elif source == "redis" and compute_seconds > 0:
            total, n = self._compute.get(task, (0.0, 0))
            self._compute[task] = (total + compute_seconds, n + 1)
            saved = compute_seconds
        else:
            total, n = self._compute.get(task, (0.0, 0))
            saved = total / n if n else 0.0
        if saved:
            self._saved[task] = self._saved.get(task, 0.0) + saved
        self._last.value = (task, source, saved)
        self._countdown -= 1
        if self._countdown <= 0:
            self._countdown = self.sample_every
            self.registry.observe(REQUEST_SECONDS, elapsed, self.sample_every, source=source)

    def last(self) -> tuple[str, str, float] | None:
        """(task, source, seconds saved) of this thread's latest call, then forgotten."""
        value: tuple[str, str, float] | None = getattr(self._last, "value", None)
        self._last.value = None
        return value

    def _collect(self) -> list[Sample]:
        self._flush()
        samples = [
            Sample("counter", REQUESTS, count, {"task": task, "source": source})
            for (task, source), count in list(self._counts.items())
        ]
        if self.client:
            samples += [
                Sample("counter", CLIENT_REQUESTS, sample.value, sample.labels)
                for sample in samples
            ]
        samples += [
            Sample("counter", COMPUTE_SECONDS_SAVED, saved, {"task": task})
            for task, saved in list(self._saved.items())
        ]
        return samples


def fleet_samples(
    cache: MultiLevelCache, coordinator: FleetCoordinator, refresher: BackgroundRefresher
) -> Callable[[], list[Sample]]:
    """A collector of the fleet counters (the cache's), gauges (the coordinator's) and
    background refreshes."""

    def collect() -> list[Sample]:
        stats = {**(cache.stats()["fleet"] or {}), **coordinator.stats()}
        samples = [
            Sample("gauge", COORDINATOR_ACTIVE, value, {"what": name})
            for name, value in stats.items()
            if name in ACTIVE_FIGURES
        ]
        samples += [
            Sample("counter", COORDINATOR_EVENTS, value, {"event": name})
            for name, value in stats.items()
            if name not in ACTIVE_FIGURES
        ]
        samples += [
            Sample("counter", REFRESHES, getattr(refresher, outcome, 0), {"outcome": outcome})
            for outcome in ("started", "dropped", "failed")
        ]
        return samples

    return collect


def pool_samples(registry: PoolRegistry) -> Callable[[], list[Sample]]:
    """A collector of the pools ``registry`` built (it never builds one) and its budget."""

    def collect() -> list[Sample]:
        figures = registry.snapshot()
        samples: list[Sample] = []
        for name, pool in figures["pools"].items():
            labels = {"pool": name}
            for field, metric, kind in (
                ("in_use", POOL_IN_USE, "gauge"),
                ("idle", POOL_IDLE, "gauge"),
                ("timeouts", POOL_TIMEOUTS, "counter"),
            ):
                value = pool.get(field)
                if isinstance(value, (int, float)):
                    samples.append(Sample(kind, metric, value, labels))
        used = figures.get("memory", {}).get("used")
        if isinstance(used, (int, float)):
            samples.append(Sample("gauge", MEMORY_USED, used))
        return samples

    return collect
