"""Merging and reading metric snapshots: counters add, gauges stay per process, sketches merge.

A snapshot (see :meth:`tiercel.core.metrics.registry.MetricsRegistry.snapshot`) is plain JSON
data, so it can travel through the Celery result backend; merging is
associative and commutative with :func:`empty_snapshot` as its identity, so
fleet-wide percentiles are percentiles of all samples, not averages.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from tiercel.core.metrics.sketches import LatencySketch

FORMAT: Final = 1

Labels = tuple[tuple[str, str], ...]
SeriesKey = tuple[str, Labels]


def series_entry(key: SeriesKey, **fields: Any) -> dict[str, Any]:
    """One series of a snapshot: its name, its labels and its value fields."""
    return {"name": key[0], "labels": dict(key[1]), **fields}


def empty_snapshot() -> dict[str, Any]:
    """A snapshot of no process: the identity of :func:`merge_snapshots`."""
    return {
        "format": FORMAT,
        "taken_at": None,
        "processes": [],
        "counters": [],
        "gauges": [],
        "sketches": [],
    }


def merge_snapshots(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge snapshots of distinct processes (or merged ones) into one of the same shape.

    Counters add; gauges keep every process's value in ``by_process`` and
    their sum in ``value``; sketches merge bucket by bucket. ``taken_at`` is
    the latest. Associative and commutative (up to float rounding of sums).

    :class:`ValueError` if a process appears in two inputs: counters would be
    counted twice, so keep only the newest snapshot of each process first.
    """
    processes: dict[str, Mapping[str, Any]] = {}
    counters: dict[SeriesKey, float] = {}
    gauges: dict[SeriesKey, dict[str, float]] = {}
    sketches: dict[SeriesKey, LatencySketch] = {}
    taken_at: float | None = None
    for snapshot in snapshots:
        if snapshot.get("format") != FORMAT:
            raise ValueError(
                f"not a metrics snapshot of format {FORMAT}: format={snapshot.get('format')!r}"
            )
        for process in snapshot["processes"]:
            if process["id"] in processes:
                raise ValueError(
                    f"process {process['id']!r} appears in two snapshots; merge only the "
                    "newest snapshot of each process"
                )
            processes[process["id"]] = process
        stamp = snapshot["taken_at"]
        if stamp is not None and (taken_at is None or stamp > taken_at):
            taken_at = stamp
        for item in snapshot["counters"]:
            key = _key_of(item)
            counters[key] = counters.get(key, 0) + item["value"]
        for item in snapshot["gauges"]:
            gauges.setdefault(_key_of(item), {}).update(item["by_process"])
        for item in snapshot["sketches"]:
            key = _key_of(item)
            sketch = LatencySketch.from_dict(item["sketch"])
            if key in sketches:
                sketches[key].merge(sketch)
            else:
                sketches[key] = sketch
    return {
        "format": FORMAT,
        "taken_at": taken_at,
        "processes": [processes[pid] for pid in sorted(processes)],
        "counters": [series_entry(key, value=value) for key, value in sorted(counters.items())],
        "gauges": [
            series_entry(
                key,
                value=sum(by_process[pid] for pid in sorted(by_process)),
                by_process={pid: by_process[pid] for pid in sorted(by_process)},
            )
            for key, by_process in sorted(gauges.items())
        ],
        "sketches": [
            series_entry(key, sketch=sketch.to_dict())
            for key, sketch in sorted(sketches.items(), key=lambda item: item[0])
        ],
    }


def counter_total(snapshot: Mapping[str, Any], name: str, /, **labels: str) -> float:
    """The sum of counter ``name`` over the series whose labels include ``labels``."""
    total: float = 0
    for item in _matching(snapshot["counters"], name, labels):
        total += item["value"]
    return total


def sketch_of(snapshot: Mapping[str, Any], name: str, /, **labels: str) -> LatencySketch | None:
    """The merged sketch ``name`` over the series whose labels include ``labels``.

    ``sketch_of(fleet, REQUEST_SECONDS).quantile(0.99)`` is the fleet's p99 over
    every source; with ``source="computed"`` it is over computed requests only.
    None if no series matches.
    """
    found = [
        LatencySketch.from_dict(item["sketch"])
        for item in _matching(snapshot["sketches"], name, labels)
    ]
    return LatencySketch.merged(found) if found else None


def _matching(
    items: Iterable[Mapping[str, Any]], name: str, labels: Mapping[str, str]
) -> Iterator[Mapping[str, Any]]:
    for item in items:
        if item["name"] == name and all(
            item["labels"].get(label) == value for label, value in labels.items()
        ):
            yield item


def _key_of(item: Mapping[str, Any]) -> SeriesKey:
    return (item["name"], tuple(sorted(item["labels"].items())))
