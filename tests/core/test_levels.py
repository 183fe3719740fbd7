"""Tests of the local levels: the shared suite for each kind, then what is particular to each."""

from __future__ import annotations

import random
import sys
import threading
from typing import Any

import pytest

from tests.core.level_suite import FakeClock, LevelSuite
from tiercel.core.local.bytes_level import BytesLevel
from tiercel.core.local.cache_level import COST, LRU, CacheLevel
from tiercel.core.local.expiry import EXPIRY_OVERHEAD
from tiercel.core.local.memory_level import MemoryLevel


class TestMemoryLevel(LevelSuite):
    level_cls = MemoryLevel
    falsey_values = (None, 0, 0.0, False, "", b"", (), [], {})


class TestMemoryLevelCost(TestMemoryLevel):
    policy = COST


class TestBytesLevel(LevelSuite):
    level_cls = BytesLevel


class TestBytesLevelCost(TestBytesLevel):
    policy = COST


@pytest.mark.parametrize("kind", [MemoryLevel, BytesLevel])
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_entries": 0}, "max_entries"),
        ({"max_entries": -3}, "max_entries"),
        ({"max_entries": 2.5}, "max_entries"),
        ({"max_entries": True}, "max_entries"),
        ({"max_entries": 10, "max_bytes": 0}, "max_bytes"),
        ({"max_entries": 10, "ttl": 0}, "ttl"),
        ({"max_entries": 10, "ttl": -1.0}, "ttl"),
        ({"max_entries": 10, "ttl": float("nan")}, "ttl"),
    ],
)
def test_constructor_validates(
    kind: type[CacheLevel[Any]], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        kind("bad", **kwargs)


def test_memory_level_holds_live_objects() -> None:
    level = MemoryLevel("l1", max_entries=4)
    value = {"rows": [1, 2, 3]}
    level.set("k", value)
    assert level.get("k") is value
    assert level.nbytes == sys.getsizeof(value) + len("k") + level.entry_overhead


def test_bytes_level_size_policy() -> None:
    level = BytesLevel("l2", max_entries=4)
    assert level.getsizeof(b"x" * 100) == sys.getsizeof(b"x" * 100)
    level.set("key", b"x" * 100, ttl=5)
    overhead = level.entry_overhead + EXPIRY_OVERHEAD
    assert level.nbytes == sys.getsizeof(b"x" * 100) + 3 + overhead


@pytest.mark.parametrize("value", ["text", bytearray(b"mutable"), memoryview(b"v"), 3, None])
def test_bytes_level_rejects_non_bytes(value: Any) -> None:
    level = BytesLevel("l2", max_entries=4)
    with pytest.raises(TypeError, match="stores bytes"):
        level.set("k", value)
    with pytest.raises(TypeError):
        level["k"] = value
    assert len(level) == 0


def test_popitem_is_the_eviction_policy() -> None:
    class NewestOut(MemoryLevel):
        """Evicts the most recent other entry instead: proves set() goes through popitem."""

        def popitem(self) -> tuple[str, Any]:
            with self._lock:
                key = next(iter(self._data))
                value = self.pop(key)
                return key, value

    calls: list[str] = []

    class Counting(MemoryLevel):
        def popitem(self) -> tuple[str, Any]:
            item = super().popitem()
            calls.append(item[0])
            return item

    level = Counting("l1", max_entries=2, policy=LRU)
    for key in "abcd":
        level.set(key, key)
    assert calls == ["a", "b"]
    assert isinstance(NewestOut("x", max_entries=1), CacheLevel)


def level_overhead(policy: str = LRU) -> int:
    return MemoryLevel("probe", max_entries=1, policy=policy).entry_overhead


def test_getsizeof_is_the_size_policy() -> None:
    class Flat(MemoryLevel):
        def getsizeof(self, value: Any) -> int:
            return 1000

    level = Flat("l1", max_entries=100, max_bytes=3 * (1000 + 1 + level_overhead()), policy=LRU)
    for key in "abcde":
        level.set(key, object())
    assert list(level) == ["c", "d", "e"]


def test_callback_runs_outside_the_lock() -> None:
    """A callback may use the level (e.g. to log its stats) without deadlocking."""
    clock = FakeClock()
    level = MemoryLevel("l1", max_entries=1, timer=clock)
    seen: list[int] = []
    level.on_evict = lambda key, reason: seen.append(level.stats.evictions)
    level.set("a", 1)
    level.set("b", 2)
    assert seen == [1]


@pytest.mark.parametrize("policy", [COST, LRU])
def test_threads_hammering_one_level_keep_invariants(policy: str) -> None:
    level = BytesLevel("shared", max_entries=16, max_bytes=16 * 900, ttl=0.002, policy=policy)
    errors: list[BaseException] = []
    gets = [0] * 8
    start = threading.Barrier(8)

    def hammer(worker: int) -> None:
        rng = random.Random(worker)
        try:
            start.wait()
            for _ in range(3000):
                key = f"k{rng.randrange(40)}"
                op = rng.random()
                if op < 0.45:
                    level.set(key, b"v" * rng.randrange(300), tags=frozenset({key[-1]}))
                elif op < 0.85:
                    level.get(key)
                    gets[worker] += 1
                elif op < 0.93:
                    level.discard(key)
                elif op < 0.97:
                    level.expire()
                elif op < 0.99:
                    level.discard_tagged(key[-1])
                else:
                    list(level)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, to interleave inside methods
    try:
        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    stats = level.stats
    assert stats.hits + stats.misses == sum(gets)
    assert stats.entries <= 16
    assert 0 <= stats.bytes <= 16 * 900
    assert stats.bytes == sum(entry[2] for entry in level._data.values())
    if policy == COST:
        assert len(level._window or ()) + len(level._main) == len(level._data)


def test_peek_tells_ttl_left_and_charge_and_counts_nothing() -> None:
    now = [100.0]
    level = MemoryLevel("memory", max_entries=4, ttl=10.0, timer=lambda: now[0])
    level.set("k", "value", size=50)
    level.set("forever", "value", size=50, ttl=None)
    before = level.stats
    now[0] += 4.0
    ttl, charged = level.peek("k") or (None, 0)
    assert ttl == pytest.approx(6.0) and charged > 50, "the key and bookkeeping are charged too"
    assert level.peek("missing") is None
    now[0] += 7.0
    assert level.peek("k") is None, "expired"
    after = level.stats
    assert (after.hits, after.misses) == (before.hits, before.misses)
