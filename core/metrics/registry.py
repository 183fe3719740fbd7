"""The per-process metrics registry: counters, gauges and mergeable latency sketches.

One :class:`MetricsRegistry` per process holds three kinds of series, each a
metric name plus a set of string labels:

* **counters** (:meth:`~MetricsRegistry.inc`): numbers that only grow, cumulative
  since the process (or its last fork) started; they add across processes.
* **gauges** (:meth:`~MetricsRegistry.set_gauge`, or a callback registered with
  :meth:`~MetricsRegistry.register_gauge` and read at snapshot time): a figure
  of one process now; across processes they are kept per process, plus a sum.
* **sketches** (:meth:`~MetricsRegistry.observe`, :meth:`~MetricsRegistry.timer`,
  :meth:`~MetricsRegistry.timed`): :class:`~tiercel.core.metrics.sketches.LatencySketch` es of
  durations in seconds; they merge, so fleet percentiles are true percentiles.

:meth:`~MetricsRegistry.snapshot` turns the registry into a JSON-ready dict and
:func:`~tiercel.core.metrics.snapshots.merge_snapshots` merges any number of them
(from many processes, or already-merged ones) into one of the same shape; the
merge is associative and commutative, so aggregation can happen in any order or
tree. The snapshot::

    {"format": 1, "taken_at": <unix seconds>,
     "processes": [{"id", "hostname", "pid", "started_at"}, ...],
     "counters": [{"name", "labels": {..}, "value"}, ...],
     "gauges":   [{"name", "labels": {..}, "value": <sum>,
                   "by_process": {<process id>: <value>}}, ...],
     "sketches": [{"name", "labels": {..}, "sketch": LatencySketch.to_dict()}, ...]}

Bounds: a metric holds at most ``max_series`` label sets (default 1000); a new
label set beyond that is recorded in the metric's ``{"_overflow": "true"}``
series and counted in :data:`~tiercel.core.metrics.names.METRICS_OVERFLOW`
(label ``metric``), so a label fed from user data cannot grow the registry
without limit.

**Cost and the L1 hit path.** Measured by ``python -m bench.metrics`` on a
shared 2-CPU machine: :meth:`~MetricsRegistry.inc` with a label ~0.55 us
(prometheus_client's ``labels().inc()``: ~1.3 us), a bound :class:`Counter`
handle ~0.3 us, :meth:`~MetricsRegistry.observe` with a label ~0.9 us. An L1
hit costs ~3.5 us through the cache (a memo hit of a cached function ~0.4 us),
so one ``inc`` + ``observe`` per hit would add ~45%, far over the 3% budget.
The hit paths therefore record nothing per hit:

* counts are pulled, not pushed: levels, the Redis tier, single-flight and the
  memo already keep plain int counters, and
  :func:`~tiercel.core.metrics.collectors.register_cache` /
  :meth:`~MetricsRegistry.register_counter` make the registry read them when
  a snapshot is taken (+0 us per hit);
* request latency of L1 hits is timed for one hit in ``n`` (64) and recorded
  with weight ``n`` (``observe``'s ``count``), so the hit pays a countdown and
  1/64 of a timed observe: ~0.03 us, ~0.9% of an L1 hit (the bench's
  "accounting alone" row). Memo hits (~0.4 us) are only counted.

Misses, Redis reads and computations cost tens of microseconds or more, so
they can afford :meth:`~MetricsRegistry.inc` and :meth:`~MetricsRegistry.observe`
on every call.

Processes: counters restart at zero in a forked child (the parent's counts are
the parent's), and locks are re-created there, so a registry made before a
prefork pool forks is still correct in every child.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Final, ParamSpec, TypeVar

from tiercel.core.metrics.names import METRICS_COLLECTOR_ERRORS, METRICS_OVERFLOW
from tiercel.core.metrics.samples import COUNTER, GAUGE, Collector
from tiercel.core.metrics.sketches import (
    DEFAULT_BIN_LIMIT,
    DEFAULT_RELATIVE_ACCURACY,
    LatencySketch,
)
from tiercel.core.metrics.snapshots import FORMAT, Labels, SeriesKey, series_entry
from tiercel.core.metrics.timing import BlockTimer, time_calls

__all__ = ["DEFAULT_MAX_SERIES", "OVERFLOW_LABELS", "Counter", "MetricsRegistry"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: Label sets per metric before new ones go to the overflow series.
DEFAULT_MAX_SERIES: Final = 1000
#: The labels of a metric's overflow series.
OVERFLOW_LABELS: Final[Mapping[str, str]] = {"_overflow": "true"}

_SKETCH: Final = "sketch"

_OVERFLOW: Final[Labels] = tuple(sorted(OVERFLOW_LABELS.items()))
_NO_LABELS: Final[Labels] = ()


class Counter:
    """A bound counter series (see :meth:`MetricsRegistry.counter`)."""

    __slots__ = ("_key", "_registry")

    def __init__(self, registry: MetricsRegistry, key: SeriesKey) -> None:
        self._registry = registry
        self._key = key

    def inc(self, value: float = 1) -> None:
        """Add ``value`` (>= 0) to the counter."""
        registry = self._registry
        with registry._lock:
            counters = registry._counters
            counters[self._key] = counters.get(self._key, 0) + value

    @property
    def value(self) -> float:
        """The counter's value now."""
        return self._registry._counters.get(self._key, 0)


class MetricsRegistry:
    """Counters, gauges and latency sketches of one process; see the module docs.

    ``clock`` times :meth:`timer` and :meth:`timed` blocks (monotonic seconds);
    ``wall_clock`` stamps snapshots. Both may be fakes in tests. Sketches are
    built with ``relative_accuracy`` and ``bin_limit``; processes whose
    snapshots are merged must agree on the accuracy.

    Label values must be ``str``; labels are keyword arguments, the metric name
    and the value positional, so a label may be called ``name`` or ``value``.
    A name is one kind of metric: using it as another raises :class:`ValueError`.
    """

    def __init__(
        self,
        *,
        max_series: int = DEFAULT_MAX_SERIES,
        relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
        bin_limit: int = DEFAULT_BIN_LIMIT,
        clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(max_series, bool) or not isinstance(max_series, int) or max_series < 1:
            raise ValueError(f"max_series must be an int >= 1, got {max_series!r}")
        LatencySketch(relative_accuracy, bin_limit)  # validate once, here
        self.max_series = max_series
        self.relative_accuracy = relative_accuracy
        self.bin_limit = bin_limit
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._counters: dict[SeriesKey, float] = {}
        self._gauges: dict[SeriesKey, float] = {}
        self._sketches: dict[SeriesKey, LatencySketch] = {}
        self._gauge_callbacks: dict[SeriesKey, Callable[[], float]] = {}
        self._counter_callbacks: dict[SeriesKey, Callable[[], float]] = {}
        self._collectors: list[Collector] = []
        self._kinds: dict[str, str] = {}
        self.series_entry: dict[str, int] = {}
        self._started_at = wall_clock()
        _REGISTRIES.add(self)

    # -- recording (hot path: no allocation once a series exists) -------------------------

    def inc(self, name: str, value: float = 1, /, **labels: str) -> None:
        """Add ``value`` (>= 0) to the counter ``name`` with ``labels``."""
        key = (name, tuple(sorted(labels.items())) if len(labels) > 1 else tuple(labels.items()))
        with self._lock:
            counters = self._counters
            current = counters.get(key)
            if current is None:
                if value < 0:
                    raise ValueError(f"counter {name!r} only grows; got {value!r}")
                key = self._admit(key, COUNTER)
                current = counters.get(key, 0)
            counters[key] = current + value

    def set_gauge(self, name: str, value: float, /, **labels: str) -> None:
        """Set the gauge ``name`` with ``labels`` to ``value``."""
        key = (name, tuple(sorted(labels.items())) if len(labels) > 1 else tuple(labels.items()))
        with self._lock:
            if key not in self._gauges:
                key = self._admit(key, GAUGE)
            self._gauges[key] = value

    def observe(self, name: str, seconds: float, count: int = 1, /, **labels: str) -> None:
        """Record a duration of ``seconds`` in the sketch ``name`` with ``labels``.

        ``count`` > 1 records the duration as that many events: the way to time
        one in ``count`` calls of a path too hot to time every call.
        """
        key = (name, tuple(sorted(labels.items())) if len(labels) > 1 else tuple(labels.items()))
        sketch = self._sketches.get(key)  # a dict read needs no lock
        if sketch is None:
            sketch = self.sketch(name, **labels)
        sketch.add(seconds, count)

    def timer(self, name: str, /, **labels: str) -> BlockTimer:
        """A context manager recording how long its block takes in sketch ``name``.

        ``with registry.timer(REQUEST_SECONDS, source="computed") as t: ...``;
        ``t.elapsed`` holds the seconds afterwards.
        """
        return BlockTimer(self.sketch(name, **labels), self._clock)

    def timed(self, name: str, /, **labels: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
        """A decorator recording how long each call takes in sketch ``name``."""

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            return time_calls(fn, self.sketch(name, **labels), self._clock)

        return decorate

    # -- series handles and callbacks ---------------------------------------------------

    def counter(self, name: str, /, **labels: str) -> Counter:
        """A handle on counter ``name`` with ``labels``: ``inc()`` skips the label work.

        Registers the series now (an overflowing label set binds the overflow
        series, counted once here).
        """
        key = (name, tuple(sorted(labels.items())) if len(labels) > 1 else tuple(labels.items()))
        with self._lock:
            if key not in self._counters:
                key = self._admit(key, COUNTER)
                self._counters.setdefault(key, 0)
        return Counter(self, key)

    def sketch(self, name: str, /, **labels: str) -> LatencySketch:
        """The live sketch ``name`` with ``labels`` (created if new): add to it directly."""
        key = (name, tuple(sorted(labels.items())) if len(labels) > 1 else tuple(labels.items()))
        with self._lock:
            sketch = self._sketches.get(key)
            if sketch is None:
                key = self._admit(key, _SKETCH)
                sketch = self._sketches.get(key)
                if sketch is None:
                    sketch = LatencySketch(self.relative_accuracy, self.bin_limit)
                    self._sketches[key] = sketch
            return sketch

    def register_gauge(self, name: str, fn: Callable[[], float], /, **labels: str) -> None:
        """Read gauge ``name`` with ``labels`` from ``fn()`` at every snapshot.

        Replaces an earlier callback of the same series. A callback that raises
        is logged and counted in :data:`METRICS_COLLECTOR_ERRORS`; the snapshot
        goes on without it.
        """
        key = (name, tuple(sorted(labels.items())) if len(labels) > 1 else tuple(labels.items()))
        with self._lock:
            if key not in self._gauge_callbacks:
                key = self._admit(key, GAUGE)
            self._gauge_callbacks[key] = fn

    def register_counter(self, name: str, fn: Callable[[], float], /, **labels: str) -> None:
        """Read counter ``name`` with ``labels`` from ``fn()`` at every snapshot.

        For a count a component already keeps (``fn`` returns its cumulative
        value): the hot path pays nothing. Added to any :meth:`inc` of the same
        series; :meth:`reset` does not zero it. Errors as in :meth:`register_gauge`.
        """
        key = (name, tuple(sorted(labels.items())) if len(labels) > 1 else tuple(labels.items()))
        with self._lock:
            if key not in self._counter_callbacks:
                key = self._admit(key, COUNTER)
            self._counter_callbacks[key] = fn

    def register_collector(self, collector: Collector) -> None:
        """Call ``collector()`` at every snapshot and add the :class:`Sample` s it yields.

        The way to report figures a component already counts (no cost until a
        snapshot); see :func:`register_cache`. Its counters are cumulative
        values owned by the source, so :meth:`reset` does not zero them.
        """
        with self._lock:
            self._collectors.append(collector)

    def unregister_collector(self, collector: Collector) -> None:
        """Stop calling ``collector`` (no error if it was not registered)."""
        with self._lock:
            if collector in self._collectors:
                self._collectors.remove(collector)

    # -- reading -------------------------------------------------------------------------

    def counter_value(self, name: str, /, **labels: str) -> float:
        """The recorded value of counter ``name`` with exactly ``labels`` (0 if absent).

        Collectors are not consulted; take a :meth:`snapshot` for those.
        """
        key = (name, tuple(sorted(labels.items())) if len(labels) > 1 else tuple(labels.items()))
        with self._lock:
            return self._counters.get(key, 0)

    def get_sketch(self, name: str, /, **labels: str) -> LatencySketch | None:
        """The live sketch ``name`` with exactly ``labels``, or None (never creates one)."""
        key = (name, tuple(sorted(labels.items())) if len(labels) > 1 else tuple(labels.items()))
        return self._sketches.get(key)

    @property
    def clock(self) -> Callable[[], float]:
        """The monotonic clock timers use."""
        return self._clock

    def label_sets(self, name: str, /) -> list[dict[str, str]]:
        """The label sets recorded for metric ``name`` (any kind), sorted."""
        with self._lock:
            found = {
                labels
                for store in (
                    self._counters,
                    self._gauges,
                    self._sketches,
                    self._gauge_callbacks,
                    self._counter_callbacks,
                )
                for (metric, labels) in store
                if metric == name
            }
        return [dict(labels) for labels in sorted(found)]

    @property
    def process(self) -> dict[str, Any]:
        """Who this registry belongs to: ``id``, ``hostname``, ``pid``, ``started_at``."""
        pid = os.getpid()
        hostname = socket.gethostname()
        return {
            "id": f"{hostname}:{pid}:{self._started_at:.6f}",
            "hostname": hostname,
            "pid": pid,
            "started_at": self._started_at,
        }

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready snapshot of every series (see the module docs for its shape).

        Gauge callbacks and collectors run here, outside the registry's lock.
        """
        with self._lock:
            counters = dict(self._counters)
            gauges = dict(self._gauges)
            sketches = list(self._sketches.items())
            callbacks = list(self._gauge_callbacks.items())
            counter_callbacks = list(self._counter_callbacks.items())
            collectors = list(self._collectors)
        failures = 0
        for key, fn in callbacks:
            try:
                gauges[key] = fn()
            except Exception:
                failures += 1
                logger.warning(
                    "gauge callback for %s%s failed", key[0], dict(key[1]), exc_info=True
                )
        for key, fn in counter_callbacks:
            try:
                counters[key] = counters.get(key, 0) + fn()
            except Exception:
                failures += 1
                logger.warning(
                    "counter callback for %s%s failed", key[0], dict(key[1]), exc_info=True
                )
        for collector in collectors:
            try:
                samples = list(collector())
            except Exception:
                failures += 1
                logger.warning("metrics collector %r failed", collector, exc_info=True)
                continue
            for sample in samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if sample.kind == COUNTER:
                    counters[key] = counters.get(key, 0) + sample.value
                else:
                    gauges[key] = gauges.get(key, 0) + sample.value
        if failures:
            self.inc(METRICS_COLLECTOR_ERRORS, failures)
            key = (METRICS_COLLECTOR_ERRORS, _NO_LABELS)
            counters[key] = counters.get(key, 0) + failures
        process = self.process
        pid = process["id"]
        return {
            "format": FORMAT,
            "taken_at": self._wall_clock(),
            "processes": [process],
            "counters": [series_entry(key, value=value) for key, value in sorted(counters.items())],
            "gauges": [
                series_entry(key, value=value, by_process={pid: value})
                for key, value in sorted(gauges.items())
            ],
            "sketches": [
                series_entry(key, sketch=sketch.to_dict())
                for key, sketch in sorted(sketches, key=lambda item: item[0])
            ],
        }

    def reset(self) -> None:
        """Zero every counter, forget every gauge value and empty every sketch.

        Series, handles (:meth:`sketch`, :meth:`timer`), callbacks and collectors
        stay registered; figures owned by collectors' sources are theirs to reset.
        """
        with self._lock:
            for key in self._counters:
                self._counters[key] = 0
            self._gauges.clear()
            sketches = list(self._sketches.values())
        for sketch in sketches:
            sketch.clear()

    def _after_fork(self) -> None:
        # Another thread may have held a lock at fork time: the child gets new ones.
        self._lock = threading.Lock()
        for sketch in self._sketches.values():
            sketch.reset_after_fork()
        for key in self._counters:
            self._counters[key] = 0
        self._gauges.clear()
        self._started_at = self._wall_clock()

    # -- internals -----------------------------------------------------------------------

    def _admit(self, key: SeriesKey, kind: str) -> SeriesKey:
        """Check a new series and return the key to record it under; caller holds the lock.

        Beyond ``max_series`` label sets the overflow series' key is returned.
        """
        name, labels = key
        known = self._kinds.get(name)
        if known is None:
            if not isinstance(name, str) or not name:
                raise ValueError(f"a metric name must be a non-empty str, got {name!r}")
            self._kinds[name] = kind
        elif known != kind:
            raise ValueError(
                f"metric {name!r} is a {known}; it cannot also be used as a {kind} "
                "(give the new metric another name)"
            )
        for label, value in labels:
            if not isinstance(value, str):
                raise TypeError(
                    f"metric {name!r}: label {label}={value!r} must be a str "
                    "(convert it, and keep label values few: each one is a series)"
                )
        count = self.series_entry.get(name, 0)
        if count >= self.max_series and name != METRICS_OVERFLOW:
            okey = (METRICS_OVERFLOW, (("metric", name),))
            self._counters[okey] = self._counters.get(okey, 0) + 1
            self._kinds.setdefault(METRICS_OVERFLOW, COUNTER)
            return (name, _OVERFLOW)
        self.series_entry[name] = count + 1
        return key


# Every live registry, so a forked child can reset them all.
_REGISTRIES: weakref.WeakSet[MetricsRegistry] = weakref.WeakSet()


def _reset_registries_after_fork() -> None:
    for registry in list(_REGISTRIES):
        registry._after_fork()


os.register_at_fork(after_in_child=_reset_registries_after_fork)
