"""MemoryBudget over real cache levels."""

from __future__ import annotations

import logging
import os

import pytest

from tiercel.core.local.bytes_level import BytesLevel
from tiercel.core.local.memory_budget import MemoryBudget, fits_max_memory_per_child, peak_rss_bytes
from tiercel.core.local.memory_level import MemoryLevel


def fill(level: BytesLevel, n: int, size: int = 1000, prefix: str = "k") -> None:
    for i in range(n):
        level.set(f"{prefix}{i}", b"x" * size)


def test_reports_the_sum_of_registered_levels() -> None:
    l1 = MemoryLevel("l1", max_entries=100, max_bytes=50_000)
    l2 = BytesLevel("l2", max_entries=100, max_bytes=200_000)
    budget = MemoryBudget(1_000_000)
    budget.register(l1)
    budget.register(l2)
    budget.register(l2)  # idempotent
    assert budget.used == 0
    l1.set("a", "value")
    fill(l2, 10)
    assert budget.used == l1.nbytes + l2.nbytes > 10_000
    assert budget.available == 1_000_000 - budget.used
    assert budget.reserved == 250_000
    snap = budget.snapshot()
    assert snap["used"] == budget.used and snap["max_bytes"] == 1_000_000
    assert set(snap["levels"]) == {"l1", "l2"}
    assert snap["levels"]["l2"] == {"nbytes": l2.nbytes, "max_bytes": 200_000}
    assert snap["peak_rss_bytes"] > 0
    budget.unregister(l1)
    assert budget.used == l2.nbytes


def test_enforce_evicts_by_policy_from_the_largest_level_until_it_fits() -> None:
    small = BytesLevel("small", max_entries=1000, max_bytes=10**7)
    big = BytesLevel("big", max_entries=1000, max_bytes=10**7)
    fill(small, 5)
    fill(big, 40, prefix="b")
    budget = MemoryBudget(big.nbytes // 2 + small.nbytes)
    budget.register(small)
    budget.register(big)
    big.get("b0")  # used again: scores above every other entry, must survive
    evicted = budget.enforce()
    assert evicted > 0 and budget.used <= budget.max_bytes
    assert len(small) == 5, "the smaller level is left alone while the larger one is bigger"
    assert "b0" in big and len(big) < 40
    assert budget.snapshot()["evictions"] == evicted
    assert budget.enforce() == 0


def test_enforce_stops_when_levels_are_empty() -> None:
    level = BytesLevel("l", max_entries=10, max_bytes=10**6)
    fill(level, 3)
    budget = MemoryBudget(1)
    budget.register(level)
    assert budget.enforce() == 3
    assert len(level) == 0 and budget.used == 0


def test_oversubscribed_levels_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    budget = MemoryBudget(1000)
    with caplog.at_level(logging.WARNING, logger="tiercel.memory"):
        budget.register(BytesLevel("l", max_entries=10, max_bytes=5000))
    assert "over the budget" in caplog.text
    unbounded = MemoryBudget(1000)
    unbounded.register(MemoryLevel("l1", max_entries=10))
    assert unbounded.reserved is None


def test_budget_validation() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        MemoryBudget(0)


def test_fits_max_memory_per_child() -> None:
    assert fits_max_memory_per_child(10**9, None)
    assert fits_max_memory_per_child(10**9, 0)
    assert fits_max_memory_per_child(64 * 2**20, 200 * 1024, baseline_bytes=100 * 2**20)
    assert not fits_max_memory_per_child(128 * 2**20, 200 * 1024, baseline_bytes=100 * 2**20)
    assert peak_rss_bytes() > 10 * 2**20  # a Python process with pytest loaded


def test_a_forked_child_starts_with_its_own_empty_budget() -> None:
    # What a recycled or new prefork child sees: the process's registry (held, as the
    # runtime holds it, in a ProcessLocal) is forgotten after fork, and a fresh one (and
    # its budget) is built in the child.
    from tiercel.core.settings import Settings
    from tiercel.tasks.pools import PoolRegistry
    from tiercel.tasks.process_local import ProcessLocal

    settings = Settings(cache_url="redis://127.0.0.1:1/0")
    holder = ProcessLocal(lambda: PoolRegistry(settings), close=PoolRegistry.close)
    parent = holder.get()
    level = BytesLevel("l2", max_entries=10, max_bytes=10**6)
    parent.budget.register(level)
    fill(level, 3)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            forgotten = holder.peek() is None
            child = holder.get()
            ok = forgotten and child is not parent and child.pid == os.getpid()
            ok = ok and child.budget.used == 0
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert holder.get() is parent
    assert parent.budget.used == level.nbytes > 0
    holder.clear()
    assert holder.peek() is None
