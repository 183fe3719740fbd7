"""Fleet metrics: each worker process's registry, its snapshot publisher, and the fleet view.

**Wiring** (:func:`instrument`, called by :class:`tiercel.tasks.runtime.Runtime`): one
:class:`~tiercel.core.metrics.registry.MetricsRegistry` per process that *pulls* at snapshot time
the levels' and the Redis tier's own counters (:func:`tiercel.core.metrics.registry.register_cache`,
breaker state included), the coordinator's, the background refresher's and the
process's pools. The memo/L1 hit path records nothing. :class:`CallRecorder`
wraps ``Runtime.call`` (the cached task's body): every call is counted by task
and source in a plain dict (pulled too) and adds its compute-seconds-saved; one
call in :data:`SAMPLE_EVERY` has its latency recorded with that weight.

**Publishing** (:class:`SnapshotPublisher`): every ``TIERCEL_METRICS_INTERVAL``
seconds each worker process, prefork children included, writes one JSON
document to the result-backend Redis with one Lua script
(``core/tier/lua/publish_snapshot.lua``) stamped by the server's clock (so
hosts' clocks do not matter)::

    {ns}:metrics:proc:{process id}   {"node", "snapshot"}   PX 3 intervals
    {ns}:metrics:index               ZSET process id -> server ms of its last publish

**Aggregating** (:func:`aggregate`): the index members published within the
last 2 intervals are read (MGET, in bounded batches), merged with
:func:`tiercel.core.metrics.registry.merge_snapshots` and summarised per node, process, task
and tier (:func:`build_view`). A process that died stops publishing and
leaves the view after 2 intervals (its key expires after 3).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import redis

from tiercel.core.encoding.prefixes import METRICS
from tiercel.core.metrics.registry import (
    CACHE_HITS,
    CACHE_MISSES,
    COMPUTE_SECONDS,
    COMPUTE_SECONDS_SAVED,
    POOL_IDLE,
    POOL_IN_USE,
    POOL_TIMEOUTS,
    REDIS_HITS,
    REDIS_MISSES,
    REQUEST_SECONDS,
    MetricsRegistry,
    Sample,
    counter_total,
    merge_snapshots,
    register_cache,
    sketch_of,
)
from tiercel.core.settings import Settings
from tiercel.core.tier import scripts

__all__ = [
    "REQUESTS",
    "SAMPLE_EVERY",
    "CallRecorder",
    "SnapshotPublisher",
    "aggregate",
    "build_view",
    "instrument",
    "latest_key",
    "metrics_client",
    "publish_snapshot",
    "read_snapshots",
]

log = logging.getLogger("tiercel.metrics")

#: Counter: task-body calls, by task and by where the answer came from [task, source].
REQUESTS: Final = "tiercel_requests_total"
#: Counter: background refreshes started, dropped (backlog full) and failed [outcome].
REFRESHES: Final = "tiercel_refreshes_total"
#: Counter: the fleet coordinator's events [event] (computed, joined, takeovers, ...).
COORDINATOR_EVENTS: Final = "tiercel_coordinator_events_total"
#: Gauge: computations this process renews a lease for, and threads waiting on one [what].
COORDINATOR_ACTIVE: Final = "tiercel_coordinator_active"
#: Gauge: bytes the local levels hold against the process's memory budget.
MEMORY_USED: Final = "tiercel_memory_budget_used_bytes"
#: Counter: local sweeps run, by what triggered them [trigger] (``message``, ``timer``).
SWEEPS: Final = "tiercel_sweeps_total"
#: Counter: expired local entries removed by sweeps.
SWEPT: Final = "tiercel_swept_entries_total"

#: One call in this many has its latency timed (recorded with this weight).
SAMPLE_EVERY: Final = 16
#: Most (task, source) pairs counted; beyond, calls are counted under task ``_other``.
MAX_TASK_SERIES: Final = 2000
#: A process is in the fleet view while its last snapshot is at most this many intervals old.
STALE_INTERVALS: Final = 2.0
#: A snapshot key lives this many intervals (dead processes' keys vanish by themselves).
TTL_INTERVALS: Final = 3.0
#: Snapshots read per MGET during aggregation.
READ_BATCH: Final = 200
#: Most processes one aggregation reads (a bound, far above any real fleet).
MAX_PROCESSES: Final = 10_000
#: The summary quantiles of latency sketches.
QUANTILES: Final = (0.5, 0.9, 0.99)


def snapshot_key(namespace: str, process_id: str) -> str:
    """Where process ``process_id`` keeps its latest snapshot."""
    return f"{namespace}:{METRICS}:proc:{process_id}"


def index_key(namespace: str) -> str:
    """The sorted set of publishing processes (score: server ms of the last publish)."""
    return f"{namespace}:{METRICS}:index"


def latest_key(namespace: str) -> str:
    """Where the task id of the newest fleet aggregation is recorded."""
    return f"{namespace}:{METRICS}:latest"


def metrics_client(settings: Settings) -> redis.Redis:
    """A client of the result-backend Redis (the cache tier's if the backend is not Redis).

    The result backend runs ``noeviction``: snapshots and locks are not evicted
    under memory pressure the way cache entries are.
    """
    url = settings.result_backend
    if not url or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        url = settings.cache_url
    if not url:
        raise ValueError("fleet metrics need a Redis result backend or cache URL")
    return redis.Redis.from_url(
        url, socket_timeout=max(1.0, settings.redis_timeout), socket_connect_timeout=2.0
    )


# -- wiring a process's registry -------------------------------------------------------------


class CallRecorder:
    """Counts the cached task body's calls by task and source; times one in ``sample_every``.

    Counts and compute-seconds-saved live in plain dicts the registry pulls at
    snapshot time. Saved seconds: a Redis read knows the value's compute time;
    a local hit (or a join) gets the task's running average compute time.
    """

    def __init__(self, registry: MetricsRegistry, *, sample_every: int = SAMPLE_EVERY) -> None:
        self.registry = registry
        self.sample_every = sample_every
        self._countdown = sample_every
        self._counts: dict[tuple[str, str], int] = {}
        self._saved: dict[str, float] = {}
        self._compute: dict[str, tuple[float, int]] = {}
        self._last = threading.local()
        registry.register_collector(self._collect)

    def wrap(self, call: Callable[..., Any]) -> Callable[..., Any]:
        """``call`` (``Runtime.call``), counted and sampled."""
        clock = time.perf_counter

        @functools.wraps(call)
        def observed(spec: Any, args: Any, kwargs: Any, **options: Any) -> Any:
            started = clock()
            found = call(spec, args, kwargs, **options)
            self.record(spec.name, found.source, clock() - started, found.compute_seconds)
            return found

        return observed

    def record(self, task: str, source: str, elapsed: float, compute_seconds: float) -> None:
        """Account one call of ``task`` answered from ``source`` in ``elapsed`` seconds."""
        key = (task, source)
        counts = self._counts
        count = counts.get(key)
        if count is None:
            if len(counts) >= MAX_TASK_SERIES:
                key = task, source = "_other", source
            count = counts.get(key, 0)
        counts[key] = count + 1
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
        samples = [
            Sample("counter", REQUESTS, count, {"task": task, "source": source})
            for (task, source), count in list(self._counts.items())
        ]
        samples += [
            Sample("counter", COMPUTE_SECONDS_SAVED, saved, {"task": task})
            for task, saved in list(self._saved.items())
        ]
        return samples


def instrument(runtime: Any) -> MetricsRegistry:
    """Give ``runtime`` a registry fed by its cache, coordinator, refresher and pools.

    Wraps ``runtime.call`` with a :class:`CallRecorder` (``runtime.recorder``).
    """
    registry = MetricsRegistry()
    register_cache(registry, runtime.cache)
    recorder = CallRecorder(registry)
    runtime.recorder = recorder
    runtime.call = recorder.wrap(runtime.call)

    def coordinator_samples() -> list[Sample]:
        stats = runtime.coordinator.stats()
        active = {"renewing", "waiting"}
        samples = [
            Sample("gauge", COORDINATOR_ACTIVE, value, {"what": name})
            for name, value in stats.items()
            if name in active
        ]
        samples += [
            Sample("counter", COORDINATOR_EVENTS, value, {"event": name})
            for name, value in stats.items()
            if name not in active
        ]
        refresher = runtime.refresher
        samples += [
            Sample("counter", REFRESHES, getattr(refresher, outcome, 0), {"outcome": outcome})
            for outcome in ("started", "dropped", "failed")
        ]
        return samples

    registry.register_collector(coordinator_samples)
    registry.register_collector(_pool_samples)
    return registry


def _pool_samples() -> list[Sample]:
    from tiercel.tasks import pools

    registry = pools._current  # never build pools just to report on them
    if registry is None or registry.pid != os.getpid():
        return []
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


# -- publishing ------------------------------------------------------------------------------


def publish_snapshot(
    client: redis.Redis,
    namespace: str,
    registry: MetricsRegistry,
    interval: float,
    *,
    node: str | None = None,
) -> int:
    """Write ``registry``'s snapshot now; returns the server time (ms) it was stamped with."""
    snapshot = registry.snapshot()
    process_id = snapshot["processes"][0]["id"]
    document = json.dumps(
        {"node": node or snapshot["processes"][0]["hostname"], "snapshot": snapshot},
        separators=(",", ":"),
    )
    ttl_ms = max(1, int(interval * TTL_INTERVALS * 1000))
    stamped = client.eval(
        scripts.source("publish_snapshot"),
        2,
        snapshot_key(namespace, process_id),
        index_key(namespace),
        document,
        ttl_ms,
        process_id,
    )
    return int(stamped)


class SnapshotPublisher:
    """A daemon thread publishing this process's snapshot every ``interval`` seconds.

    Failures are logged (once per outage) and retried at the next tick; a
    metrics outage never touches tasks. :meth:`stop` removes the process from
    the index, so a cleanly stopped process leaves the view at once.
    """

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        registry: MetricsRegistry,
        interval: float,
        *,
        node: str | None = None,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.registry = registry
        self.interval = interval
        self.node = node
        self.pid = os.getpid()
        self.published = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SnapshotPublisher:
        """Publish once now (so a new process shows up at once), then on every tick."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, daemon=True, name=f"tiercel-metrics-{self.pid}"
            )
            self._thread.start()
        return self

    def publish(self) -> bool:
        """Publish now; False (logged) when Redis is unreachable."""
        try:
            publish_snapshot(
                self.client, self.namespace, self.registry, self.interval, node=self.node
            )
        except Exception as exc:
            self.failures += 1
            level = logging.WARNING if self.failures == 1 else logging.DEBUG
            log.log(level, "publishing metrics failed: %s", exc)
            return False
        self.failures = 0
        self.published += 1
        return True

    def _run(self) -> None:
        self.publish()
        while not self._stop.wait(self.interval):
            self.publish()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop publishing and leave the index (best effort)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        try:
            process_id = self.registry.process["id"]
            pipe = self.client.pipeline()
            pipe.zrem(index_key(self.namespace), process_id)
            pipe.delete(snapshot_key(self.namespace, process_id))
            pipe.execute()
        except Exception:  # Redis may be gone at shutdown; the TTL cleans up
            log.debug("leaving the metrics index failed", exc_info=True)
        self.client.close()


# -- aggregating -----------------------------------------------------------------------------


def read_snapshots(client: redis.Redis, namespace: str, interval: float) -> list[dict[str, Any]]:
    """The documents of every process that published within ``STALE_INTERVALS`` intervals."""
    seconds, micros = client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    cutoff = now_ms - int(interval * STALE_INTERVALS * 1000)
    members: list[tuple[bytes, float]] = client.zrangebyscore(  # type: ignore[assignment]
        index_key(namespace), cutoff, "+inf", start=0, num=MAX_PROCESSES, withscores=True
    )
    documents: list[dict[str, Any]] = []
    for start in range(0, len(members), READ_BATCH):
        batch = members[start : start + READ_BATCH]
        values = client.mget([snapshot_key(namespace, _text(member)) for member, _ in batch])
        for (_, score), value in zip(batch, values, strict=True):
            if value is None:
                continue  # expired between the two reads: the process is gone
            try:
                document = json.loads(value)
            except ValueError:
                log.warning("skipping an unreadable metrics snapshot")
                continue
            document["published_ms"] = float(score)
            document["age"] = max(0.0, (now_ms - float(score)) / 1000)
            documents.append(document)
    return documents


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def aggregate(client: redis.Redis, namespace: str, interval: float) -> dict[str, Any]:
    """Read every live snapshot and build the fleet view (see :func:`build_view`)."""
    return build_view(read_snapshots(client, namespace, interval), interval=interval)


def _latency(snapshot: Mapping[str, Any], name: str, **labels: str) -> dict[str, Any] | None:
    sketch = sketch_of(snapshot, name, **labels)
    if sketch is None or sketch.count == 0:
        return None
    figures: dict[str, Any] = {"count": sketch.count, "sum": sketch.sum, "max": sketch.max}
    for q in QUANTILES:
        figures[f"p{round(q * 100)}"] = sketch.quantile(q)
    return figures


def _label_values(snapshot: Mapping[str, Any], name: str, label: str) -> list[str]:
    found = {
        item["labels"][label]
        for kind in ("counters", "gauges", "sketches")
        for item in snapshot[kind]
        if item["name"] == name and label in item["labels"]
    }
    return sorted(found)


def summarize(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """Requests by source, computations, compute-seconds saved and tier hit ratios."""
    sources = _label_values(snapshot, REQUESTS, "source")
    by_source = {source: counter_total(snapshot, REQUESTS, source=source) for source in sources}
    tiers: dict[str, dict[str, float]] = {}
    for level in _label_values(snapshot, CACHE_HITS, "level"):
        tiers[level] = _ratio(
            counter_total(snapshot, CACHE_HITS, level=level),
            counter_total(snapshot, CACHE_MISSES, level=level),
        )
    tiers["redis"] = _ratio(
        counter_total(snapshot, REDIS_HITS), counter_total(snapshot, REDIS_MISSES)
    )
    return {
        "requests": sum(by_source.values()),
        "by_source": by_source,
        "computed": by_source.get("computed", 0),
        "compute_seconds_saved": counter_total(snapshot, COMPUTE_SECONDS_SAVED),
        "tiers": tiers,
    }


def _ratio(hits: float, misses: float) -> dict[str, float]:
    lookups = hits + misses
    return {"hits": hits, "misses": misses, "hit_ratio": hits / lookups if lookups else 0.0}


def build_view(documents: Iterable[Mapping[str, Any]], *, interval: float) -> dict[str, Any]:
    """The fleet view: the merged snapshot, plus summaries per node, process, task and tier.

    One snapshot per process (the publisher's key is per process, so there is
    never a second); fleet latencies are quantiles of the merged sketches.
    """
    documents = list(documents)
    snapshots = [document["snapshot"] for document in documents]
    merged = merge_snapshots(snapshots)
    processes = []
    nodes: dict[str, list[Mapping[str, Any]]] = {}
    for document in documents:
        process = document["snapshot"]["processes"][0]
        node = str(document.get("node") or process["hostname"])
        nodes.setdefault(node, []).append(document["snapshot"])
        processes.append(
            {
                "id": process["id"],
                "node": node,
                "hostname": process["hostname"],
                "pid": process["pid"],
                "started_at": process["started_at"],
                "age": document.get("age"),
                **summarize(document["snapshot"]),
            }
        )
    processes.sort(key=lambda item: (item["node"], item["pid"]))
    tasks = {}
    for task in _label_values(merged, REQUESTS, "task"):
        by_source = {
            source: counter_total(merged, REQUESTS, task=task, source=source)
            for source in _label_values(merged, REQUESTS, "source")
        }
        by_source = {source: count for source, count in by_source.items() if count}
        tasks[task] = {
            "requests": sum(by_source.values()),
            "by_source": by_source,
            "compute_seconds_saved": counter_total(merged, COMPUTE_SECONDS_SAVED, task=task),
            "compute_seconds": _latency(merged, COMPUTE_SECONDS, task=task),
        }
    latency = {
        source: _latency(merged, REQUEST_SECONDS, source=source)
        for source in _label_values(merged, REQUEST_SECONDS, "source")
    }
    return {
        "format": 1,
        "aggregated_at": time.time(),
        "interval": interval,
        "fleet": {
            **summarize(merged),
            "processes": len(processes),
            "nodes": len(nodes),
            "latency": _latency(merged, REQUEST_SECONDS),
        },
        "nodes": {
            node: {"processes": len(items), **summarize(merge_snapshots(items))}
            for node, items in sorted(nodes.items())
        },
        "processes": processes,
        "tasks": tasks,
        "latency": {source: figures for source, figures in latency.items() if figures},
        "merged": merged,
    }
