"""The fleet view: every live process's snapshot, merged and summarised.

:func:`aggregate` reads the index members published within the last
:data:`~tiercel.tasks.metrics.STALE_INTERVALS` intervals (MGET, in bounded
batches), merges them with :func:`tiercel.core.metrics.snapshots.merge_snapshots`
and summarises per node, process, task and tier (:func:`build_view`), with
computations by miss reason and duplicate computations by cause, and the
delivery probes each process heard (``invalidation_delivery``). A
process that died stops publishing and leaves the view after 2 intervals (its
key expires after 3).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from tiercel.core.metrics.monitor import TIMER_SECONDS
from tiercel.core.metrics.names import (
    CACHE_HITS,
    CACHE_MISSES,
    COMPUTE_SECONDS,
    COMPUTE_SECONDS_SAVED,
    DUPLICATE_COMPUTATIONS,
    INVALIDATION_DELIVERY_SECONDS,
    MISSES,
    REDIS_HITS,
    REDIS_MISSES,
    REQUEST_SECONDS,
)
from tiercel.core.metrics.snapshots import counter_total, merge_snapshots, sketch_of
from tiercel.tasks.metrics import MAX_PROCESSES, QUANTILES, READ_BATCH, REQUESTS, STALE_INTERVALS
from tiercel.tasks.publisher import index_key, snapshot_key
from tiercel.tasks.retired import read_retired

log = logging.getLogger("tiercel.metrics")


def read_snapshots(client: redis.Redis, namespace: str, interval: float) -> list[dict[str, Any]]:
    """The documents of every process that published within ``STALE_INTERVALS`` intervals."""
    seconds, micros = client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    cutoff = now_ms - int(interval * STALE_INTERVALS * 1000)
    members: list[tuple[bytes, float]] = client.zrangebyscore(  # type: ignore[assignment, unused-ignore]
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
    """Read the retired figures and every live snapshot, and build the fleet view (see
    :func:`build_view`).

    The retired figures are read first: a process that retires between the two
    reads is missing from this one view, never counted twice.
    """
    retired = read_retired(client, namespace)
    return build_view(
        read_snapshots(client, namespace, interval), interval=interval, retired=retired
    )


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


def _by_label(
    snapshot: Mapping[str, Any], name: str, label: str, **labels: str
) -> dict[str, float]:
    """Counter ``name`` summed per value of ``label`` (over series matching ``labels``);
    values that never counted are left out."""
    totals = {
        value: counter_total(snapshot, name, **labels, **{label: value})
        for value in _label_values(snapshot, name, label)
    }
    return {value: total for value, total in totals.items() if total}


def summarize(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """Requests by source, computations, compute-seconds saved, tier hit ratios, and
    computations by miss reason and duplicate computations by cause."""
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
        "misses": _by_label(snapshot, MISSES, "reason"),
        "duplicates": _by_label(snapshot, DUPLICATE_COMPUTATIONS, "cause"),
        # Delivery probes heard (count) and their delay, over every listener.
        "invalidation_delivery": _latency(snapshot, INVALIDATION_DELIVERY_SECONDS),
    }


def _ratio(hits: float, misses: float) -> dict[str, float]:
    lookups = hits + misses
    return {"hits": hits, "misses": misses, "hit_ratio": hits / lookups if lookups else 0.0}


def build_view(
    documents: Iterable[Mapping[str, Any]],
    *,
    interval: float,
    retired: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The fleet view: the merged snapshot, plus summaries per node, process, task and tier.

    One snapshot per process (the publisher's key is per process, so there is
    never a second); fleet latencies are quantiles of the merged sketches.
    ``retired`` (processes that exited) counts in the fleet's and the tasks'
    totals, not among the nodes and processes.
    """
    documents = list(documents)
    snapshots = [document["snapshot"] for document in documents]
    merged = merge_snapshots([*snapshots, *([retired] if retired is not None else [])])
    processes = []
    nodes: dict[str, list[Mapping[str, Any]]] = {}
    for document in documents:
        process = document["snapshot"]["processes"][0]
        node = str(document.get("node") or process["hostname"])
        role = str(document.get("role") or "worker")
        if role == "worker":  # a node is a worker node; clients are listed as processes
            nodes.setdefault(node, []).append(document["snapshot"])
        processes.append(
            {
                "id": process["id"],
                "node": node,
                "role": role,
                "hostname": process["hostname"],
                "pid": process["pid"],
                "started_at": process["started_at"],
                "age": document.get("age"),
                **summarize(document["snapshot"]),
            }
        )
    processes.sort(key=lambda item: (item["role"] != "worker", item["node"], item["pid"]))
    tasks = {}
    task_names = {
        *_label_values(merged, REQUESTS, "task"),
        *_label_values(merged, MISSES, "task"),
    }
    for task in sorted(task_names):
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
            "misses": _by_label(merged, MISSES, "reason", task=task),
            "duplicates": _by_label(merged, DUPLICATE_COMPUTATIONS, "cause", task=task),
        }
    latency = {
        source: _latency(merged, REQUEST_SECONDS, source=source)
        for source in _label_values(merged, REQUEST_SECONDS, "source")
    }
    timers = {
        name: _latency(merged, TIMER_SECONDS, timer=name)
        for name in _label_values(merged, TIMER_SECONDS, "timer")
    }
    return {
        "format": 1,
        "aggregated_at": time.time(),
        "interval": interval,
        "fleet": {
            **summarize(merged),
            "processes": len(processes),
            "workers": sum(1 for process in processes if process["role"] == "worker"),
            "clients": sum(1 for process in processes if process["role"] == "client"),
            "nodes": len(nodes),
            "latency": _latency(merged, REQUEST_SECONDS),
        },
        "nodes": {
            node: {"processes": len(items), **summarize(merge_snapshots(items))}
            for node, items in sorted(nodes.items())
        },
        "processes": processes,
        "retired": summarize(retired) if retired is not None else None,
        "tasks": tasks,
        "latency": {source: figures for source, figures in latency.items() if figures},
        "timers": {name: figures for name, figures in timers.items() if figures},
        "merged": merged,
    }
