"""The cache's collector: figures of its levels, its Redis tier and its own counters.

A collector is a callable the registry runs at every snapshot
(:meth:`~tiercel.core.metrics.registry.MetricsRegistry.register_collector`); it
reports figures its source already keeps, so recording them costs the source's
hot path nothing. :func:`register_cache` is the one for a multi-level cache:
its levels, its Redis tier and its own counters.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from tiercel.core.metrics.names import (
    BREAKER_OPENED,
    BREAKER_STATE,
    BREAKER_STATES,
    CACHE_BYTES,
    CACHE_ENTRIES,
    CACHE_EVICTIONS,
    CACHE_EXPIRATIONS,
    CACHE_HITS,
    CACHE_MISSES,
    CACHE_REJECTED,
    COMPUTATIONS,
    COMPUTE_ERRORS,
    DUPLICATE_COMPUTATIONS,
    MISSES,
    REDIS_CORRUPT,
    REDIS_ERRORS,
    REDIS_HITS,
    REDIS_MISSES,
    REDIS_SHORT_CIRCUITED,
    REDIS_WRITES,
    SINGLEFLIGHT_JOINS,
)
from tiercel.core.metrics.samples import COUNTER, GAUGE, Collector, Sample

if TYPE_CHECKING:
    from tiercel.core.metrics.registry import MetricsRegistry

__all__ = ["cache_samples", "register_cache"]


_LEVEL_COUNTERS: Final = (
    ("hits", CACHE_HITS),
    ("misses", CACHE_MISSES),
    ("evictions", CACHE_EVICTIONS),
    ("expirations", CACHE_EXPIRATIONS),
    ("rejected", CACHE_REJECTED),
)
_LEVEL_GAUGES: Final = (("entries", CACHE_ENTRIES), ("bytes", CACHE_BYTES))
_REDIS_COUNTERS: Final = (
    ("hits", REDIS_HITS),
    ("misses", REDIS_MISSES),
    ("writes", REDIS_WRITES),
    ("errors", REDIS_ERRORS),
    ("corrupt", REDIS_CORRUPT),
    ("short_circuited", REDIS_SHORT_CIRCUITED),
    ("breaker_opened", BREAKER_OPENED),
)
_CACHE_COUNTERS: Final = (
    ("computed", COMPUTATIONS),
    ("compute_errors", COMPUTE_ERRORS),
    ("joined", SINGLEFLIGHT_JOINS),
)

#: Counters by (task, label) pairs: the cache's miss reasons and duplicate causes.
_BY_TASK_COUNTERS: Final = (
    ("misses", MISSES, "reason"),
    ("duplicates", DUPLICATE_COMPUTATIONS, "cause"),
)


def cache_samples(stats: Mapping[str, Any]) -> list[Sample]:
    """Samples from a multi-level cache's ``stats()`` (its levels, tier and counters).

    Reads ``levels`` (name -> :class:`~tiercel.core.local.level_stats.LevelStats` or a mapping),
    ``redis`` (the Redis tier's ``stats`` dict, or None) and the cache's own
    ``computed``, ``compute_errors`` and ``joined``, and its ``misses`` and
    ``duplicates`` by (task, reason or cause); absent figures are skipped.
    """
    samples: list[Sample] = []
    for level_name, level_stats in (stats.get("levels") or {}).items():
        figures = _as_mapping(level_stats)
        labels = {"level": str(level_name)}
        for field, metric in _LEVEL_COUNTERS:
            if field in figures:
                samples.append(Sample(COUNTER, metric, figures[field], labels))
        for field, metric in _LEVEL_GAUGES:
            if field in figures:
                samples.append(Sample(GAUGE, metric, figures[field], labels))
    redis_stats = stats.get("redis")
    if redis_stats:
        for field, metric in _REDIS_COUNTERS:
            if field in redis_stats:
                samples.append(Sample(COUNTER, metric, redis_stats[field]))
        state = redis_stats.get("breaker")
        if state in BREAKER_STATES:
            samples.append(Sample(GAUGE, BREAKER_STATE, BREAKER_STATES[state]))
    for field, metric in _CACHE_COUNTERS:
        if field in stats:
            samples.append(Sample(COUNTER, metric, stats[field]))
    for field, metric, label in _BY_TASK_COUNTERS:
        for (task, value), count in (stats.get(field) or {}).items():
            samples.append(Sample(COUNTER, metric, count, {"task": task, label: value}))
    return samples


def register_cache(registry: MetricsRegistry, cache: Any) -> Collector:
    """Make ``registry`` pull ``cache.stats()`` at every snapshot; return the collector.

    The hit path then costs nothing extra: the levels count as they always
    do, and the registry reads those counts only when asked. The cache is
    held weakly, so registering does not keep it alive.
    """
    ref = weakref.ref(cache)

    def collect() -> list[Sample]:
        target = ref()
        return cache_samples(target.stats()) if target is not None else []

    registry.register_collector(collect)
    return collect


def _as_mapping(figures: Any) -> Mapping[str, Any]:
    if dataclasses.is_dataclass(figures) and not isinstance(figures, type):
        return dataclasses.asdict(figures)
    if isinstance(figures, Mapping):
        return figures
    raise TypeError(f"expected LevelStats or a mapping of figures, got {type(figures).__name__}")
