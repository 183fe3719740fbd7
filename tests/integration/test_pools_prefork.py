"""Each prefork child owns its pools: built after fork in that child, new after a recycle."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fleet_tasks import describe_pools as describe
from tiercel.core.settings import resolve_settings
from tiercel.workers.launcher import Fleet, FleetSpec

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def private_fleet(queue: str, *extra: str, concurrency: int = 1) -> Iterator[Fleet]:
    """One worker node consuming only ``queue`` (so the session fleet takes none of its tasks)."""
    import tiercel.workers.app  # noqa: F401  (the client side publishes through the session's servers)

    spec = FleetSpec(
        workers=1,
        concurrency=concurrency,
        pool="prefork",
        beat=False,
        flower=False,
        loglevel="WARNING",
        grace=15.0,
        quiet=False,
        extra_worker_args=("-Q", queue, *extra),
    )
    with Fleet(resolve_settings(), spec).running() as fleet:
        yield fleet


def test_each_child_builds_its_own_pools_after_fork(fleet: Fleet) -> None:
    # 4 children (2 nodes x 2); each call holds its child so the calls spread out.
    pending = [describe.delay(hold_ms=400) for _ in range(12)]
    results: list[dict[str, Any]] = [p.get(timeout=60) for p in pending]
    pids = {r["pid"] for r in results}
    assert len(pids) >= 2, f"expected several children to answer, got {pids}"
    import os

    assert os.getpid() not in pids
    for r in results:
        assert r["registry_pid"] == r["pid"], "the registry was built in the child itself"
        redis_pool = r["pools"]["redis"]
        assert redis_pool["creator_pid"] == r["pid"], "the pool was built after fork"
        assert r["parent_pid"] != r["pid"] and r["parent_pid"] not in pids
        assert redis_pool["snapshot"]["max_size"] >= 1
        assert redis_pool["snapshot"]["in_use"] == 0
    # Within one child the pool is the same object from call to call, and its counts grow.
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        by_pid.setdefault(r["pid"], []).append(r)
    for calls in by_pid.values():
        assert len({c["pools"]["redis"]["id"] for c in calls}) == 1
        acquires = sorted(c["pools"]["redis"]["snapshot"]["acquires"] for c in calls)
        assert acquires == sorted(set(acquires))


def test_a_child_recycled_by_max_memory_per_child_starts_with_new_pools() -> None:
    queue = f"pools-recycle-{uuid.uuid4().hex[:8]}"
    # 1 KiB: every child crosses it after its first task and is replaced by a new one.
    with private_fleet(queue, "--max-memory-per-child", "1"):
        results = [
            describe.apply_async(kwargs={"hold_ms": 0}, queue=queue).get(timeout=60)
            for _ in range(3)
        ]
    pids = [r["pid"] for r in results]
    assert len(set(pids)) == 3, f"each task should run in a fresh child, got {pids}"
    for r in results:
        pool = r["pools"]["redis"]
        assert pool["creator_pid"] == r["pid"]
        # A fresh pool: this task's acquire is its first, and one connection was made.
        assert pool["snapshot"]["acquires"] == 1 and pool["snapshot"]["created"] == 1
        assert r["memory"]["used"] == 0, "a new child starts with empty levels"
        assert set(r["memory"]["levels"]) == {"memory", "bytes"}
