"""50,000 requests of a mixed workload on 2 nodes: none lost, none wrong, memory bounded."""

from __future__ import annotations

import uuid

import psutil

from tests.integration.fleet import worker_fleet
from tests.reliability.conftest import Figures
from tests.reliability.test_faults import assert_nothing_lost, finish, start_workload


def _worker_rss(fleet: object) -> dict[int, int]:
    rss: dict[int, int] = {}
    for managed in fleet.processes:  # type: ignore[attr-defined]
        root = psutil.Process(managed.process.pid)
        for process in [root, *root.children(recursive=True)]:
            rss[process.pid] = process.memory_info().rss
    return rss


def test_fifty_thousand_mixed_requests_on_two_nodes(figures: Figures) -> None:
    with worker_fleet(nodes=2, concurrency=2) as fleet:
        before = _worker_rss(fleet)
        client = start_workload(
            {
                "keys": 5000,
                "requests": 50_000,
                "seconds": 400,
                "threads": 16,
                "compute_ms": 2,
                "zipf": 1.1,
                "invalidate_rate": 0.01,
                "offset": uuid.uuid4().int % 10**9,
            }
        )
        summary = finish(client, timeout=110)
        after = _worker_rss(fleet)
    assert_nothing_lost(summary)
    assert summary["submitted"] == 50_000
    growth = {pid: after[pid] - before.get(pid, after[pid]) for pid in after}
    worst_rss = max(after.values())
    worst_growth = max(growth.values())
    figures.record(
        "load: requests answered, each checked",
        summary["answered"],
        "req",
        ok=True,
        note=f"{summary['invalidations']} invalidations mixed in, "
        f"sources {summary['sources']}, 0 lost, 0 wrong",
    )
    figures.record("load: throughput", summary["answered"] / summary["seconds"], "req/s")
    figures.record(
        "load: largest worker process RSS", worst_rss / 2**20, "MiB", ok=worst_rss < 400 * 2**20
    )
    figures.record(
        "load: largest worker RSS growth",
        worst_growth / 2**20,
        "MiB",
        ok=worst_growth < 128 * 2**20,
    )
    # Levels are bounded (entries and bytes), so the workload cannot grow a worker
    # without limit: generous bounds, the point is "bounded", not "small".
    assert worst_rss < 400 * 2**20
    assert worst_growth < 128 * 2**20
