"""The catalogue of tiercel's metric names, with the labels each takes (in brackets).

Every figure tiercel records or pulls goes under one of these names, so the
registry, the fleet view (:mod:`tiercel.tasks.metrics`) and the Prometheus
exporter speak of one series by one name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = [
    "BREAKER_OPENED",
    "BREAKER_STATE",
    "BREAKER_STATES",
    "CACHE_BYTES",
    "CACHE_ENTRIES",
    "CACHE_EVICTIONS",
    "CACHE_EXPIRATIONS",
    "CACHE_HITS",
    "CACHE_MISSES",
    "CACHE_REJECTED",
    "COMPUTATIONS",
    "COMPUTE_ERRORS",
    "COMPUTE_SECONDS",
    "COMPUTE_SECONDS_SAVED",
    "DUPLICATE_COMPUTATIONS",
    "INVALIDATION_DELIVERY_SECONDS",
    "METRICS_COLLECTOR_ERRORS",
    "METRICS_OVERFLOW",
    "MISSES",
    "POOL_IDLE",
    "POOL_IN_USE",
    "POOL_TIMEOUTS",
    "POOL_WAIT_SECONDS",
    "REDIS_CORRUPT",
    "REDIS_ERRORS",
    "REDIS_HITS",
    "REDIS_MISSES",
    "REDIS_SHORT_CIRCUITED",
    "REDIS_WRITES",
    "REQUEST_SECONDS",
    "SINGLEFLIGHT_JOINS",
    "SINGLEFLIGHT_WAIT_SECONDS",
]

#: Counter: lookups answered by a local level [level].
CACHE_HITS: Final = "tiercel_cache_hits_total"
#: Counter: lookups a local level could not answer [level].
CACHE_MISSES: Final = "tiercel_cache_misses_total"
#: Counter: entries a level evicted for room [level].
CACHE_EVICTIONS: Final = "tiercel_cache_evictions_total"
#: Counter: entries a level dropped because their TTL ran out [level].
CACHE_EXPIRATIONS: Final = "tiercel_cache_expirations_total"
#: Counter: values a level refused as larger than its byte bound [level].
CACHE_REJECTED: Final = "tiercel_cache_rejected_total"
#: Gauge: entries held by a level now [level].
CACHE_ENTRIES: Final = "tiercel_cache_entries"
#: Gauge: bytes charged by a level now [level].
CACHE_BYTES: Final = "tiercel_cache_bytes"
#: Counter: Redis-tier reads that found a value.
REDIS_HITS: Final = "tiercel_redis_hits_total"
#: Counter: Redis-tier reads that found nothing.
REDIS_MISSES: Final = "tiercel_redis_misses_total"
#: Counter: Redis-tier writes.
REDIS_WRITES: Final = "tiercel_redis_writes_total"
#: Counter: Redis-tier calls that failed (connection, timeout, server error).
REDIS_ERRORS: Final = "tiercel_redis_errors_total"
#: Counter: Redis-tier values dropped as corrupt.
REDIS_CORRUPT: Final = "tiercel_redis_corrupt_total"
#: Counter: Redis-tier calls refused at once because the breaker was open.
REDIS_SHORT_CIRCUITED: Final = "tiercel_redis_short_circuited_total"
#: Gauge: the Redis-tier breaker state, 0 closed, 1 half-open, 2 open (see BREAKER_STATES).
BREAKER_STATE: Final = "tiercel_redis_breaker_state"
#: Counter: times the Redis-tier breaker opened.
BREAKER_OPENED: Final = "tiercel_redis_breaker_opened_total"
#: Counter: callers that joined a computation already running in this process.
SINGLEFLIGHT_JOINS: Final = "tiercel_singleflight_joins_total"
#: Sketch: seconds a caller waited on someone else's computation (or lease) [scope].
SINGLEFLIGHT_WAIT_SECONDS: Final = "tiercel_singleflight_wait_seconds"
#: Counter: computations run (cache misses everywhere).
COMPUTATIONS: Final = "tiercel_computations_total"
#: Counter: computations by why the value was missing [task, reason] (a fixed set, see
#: :mod:`tiercel.core.cache.miss_reasons`).
MISSES: Final = "tiercel_misses_total"
#: Counter: computations the fleet's rules should have prevented [task, cause].
DUPLICATE_COMPUTATIONS: Final = "tiercel_duplicate_computations_total"
#: Counter: computations that raised.
COMPUTE_ERRORS: Final = "tiercel_compute_errors_total"
#: Sketch: seconds one computation took [task].
COMPUTE_SECONDS: Final = "tiercel_compute_seconds"
#: Counter: compute seconds a cache hit avoided (the stored value's compute time) [task].
COMPUTE_SECONDS_SAVED: Final = "tiercel_compute_seconds_saved_total"
#: Gauge: resources lent out by a pool now [pool].
POOL_IN_USE: Final = "tiercel_pool_in_use"
#: Gauge: idle resources held by a pool now [pool].
POOL_IDLE: Final = "tiercel_pool_idle"
#: Sketch: seconds an acquire waited for a resource [pool].
POOL_WAIT_SECONDS: Final = "tiercel_pool_wait_seconds"
#: Counter: acquires that timed out [pool].
POOL_TIMEOUTS: Final = "tiercel_pool_timeouts_total"
#: Sketch: seconds to answer one request, by where the answer came from [source]
#: (a level name, ``redis``, ``computed`` or ``joined``).
REQUEST_SECONDS: Final = "tiercel_request_seconds"
#: Sketch: seconds a delivery probe (``p|<sent>``) took from its publisher's clock to a
#: listener of this process [listener] (``notifier``: the process's channel thread, which
#: drops local copies; ``asyncio``: an event loop's subscription, which wakes awaiters).
#: The delay an invalidation published at that moment met; hosts' clock skew enters it.
INVALIDATION_DELIVERY_SECONDS: Final = "tiercel_invalidation_delivery_seconds"
#: Counter: observations recorded in a metric's overflow series [metric].
METRICS_OVERFLOW: Final = "tiercel_metrics_overflow_total"
#: Counter: collectors or gauge callbacks that raised during a snapshot.
METRICS_COLLECTOR_ERRORS: Final = "tiercel_metrics_collector_errors_total"

#: The :data:`BREAKER_STATE` value of each breaker state.
BREAKER_STATES: Final[Mapping[str, int]] = {"closed": 0, "half_open": 1, "open": 2}
