"""The shared suite every cache-level kind runs (like dogpile.cache's ``testing/fixtures.py``).

Subclass :class:`LevelSuite` in a ``test_*`` module, set ``level_cls``, ``policy``
and, when the kind only takes some values, ``falsey_values``; pytest then runs
every test here against that kind (the tests of LRU order only under LRU).
Values are ``bytes`` so that every kind can hold them. Time is a :class:`FakeClock`; nothing sleeps.
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from tiercel.core.local.cache_level import EVICTED, EXPIRED, LRU, CacheLevel
from tiercel.core.local.expiry import EXPIRY_OVERHEAD
from tiercel.core.local.level_stats import LevelStats


class FakeClock:
    """A timer for levels: returns ``now``, which only moves when a test advances it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def charge(level: CacheLevel[Any], key: str, value: Any, *, expiring: bool) -> int:
    """The bytes ``level`` charges for ``key`` -> ``value`` stored without ``size=``."""
    overhead = level.entry_overhead + (EXPIRY_OVERHEAD if expiring else 0)
    return level.getsizeof(value) + len(key) + overhead


class LevelSuite:
    """Behaviour every :class:`~tiercel.core.local.cache_level.CacheLevel` kind shares."""

    level_cls: ClassVar[type[CacheLevel[Any]]]
    policy: ClassVar[str] = LRU
    falsey_values: ClassVar[tuple[Any, ...]] = (b"",)

    @pytest.fixture()
    def clock(self) -> FakeClock:
        return FakeClock()

    def make(self, clock: FakeClock, **kwargs: Any) -> CacheLevel[Any]:
        kwargs.setdefault("max_entries", 100)
        kwargs.setdefault("policy", self.policy)
        return self.level_cls("test", timer=clock, **kwargs)

    def lru_only(self) -> None:
        """Skip a test of LRU order under another policy (its own tests cover its order)."""
        if self.policy != LRU:
            pytest.skip(f"LRU order; the {self.policy} policy orders by its own rules")

    # -- get / set ------------------------------------------------------------------

    def test_get_after_set_returns_value(self, clock: FakeClock) -> None:
        level = self.make(clock)
        assert level.set("a", b"alpha") is True
        assert level.get("a") == b"alpha"
        assert level["a"] == b"alpha"
        assert "a" in level

    def test_miss_returns_default_or_raises(self, clock: FakeClock) -> None:
        level = self.make(clock)
        assert level.get("nope") is None
        assert level.get("nope", b"dflt") == b"dflt"
        with pytest.raises(KeyError):
            level["nope"]
        assert level.get_with_ttl("nope") is None
        assert level.stats.misses == 4

    def test_falsey_values_are_cached(self, clock: FakeClock) -> None:
        level = self.make(clock)
        marker = object()
        for i, value in enumerate(self.falsey_values):
            level.set(f"k{i}", value)
        for i, value in enumerate(self.falsey_values):
            assert level.get(f"k{i}", marker) == value
            assert level.get(f"k{i}", marker) is not marker
            assert level.get_with_ttl(f"k{i}") == (value, None)
        assert level.stats.misses == 0

    def test_size_given_by_caller_is_charged(self, clock: FakeClock) -> None:
        level = self.make(clock)
        level.set("k", b"xyz", size=1000)
        assert level.nbytes == 1000 + len("k") + level.entry_overhead

    def test_negative_size_is_refused(self, clock: FakeClock) -> None:
        level = self.make(clock)
        with pytest.raises(ValueError, match="size"):
            level.set("k", b"x", size=-1)

    # -- bounds and LRU -------------------------------------------------------------

    def test_entry_bound_never_exceeded(self, clock: FakeClock) -> None:
        level = self.make(clock, max_entries=5)
        for i in range(50):
            level.set(f"k{i}", b"v%d" % i)
            assert len(level) <= 5
        assert level.stats.evictions == 45
        assert "k49" in level  # the newest entry is always kept
        if self.policy == LRU:
            assert list(level) == [f"k{i}" for i in range(45, 50)]

    def test_lru_order_refreshed_by_get(self, clock: FakeClock) -> None:
        self.lru_only()
        level = self.make(clock, max_entries=3)
        for key in "abc":
            level.set(key, key.encode())
        assert level.get("a") == b"a"  # a becomes most recent; b is now the oldest
        level.set("d", b"d")
        assert list(level) == ["c", "a", "d"]
        assert "b" not in level

    def test_contains_counts_nothing_and_keeps_order(self, clock: FakeClock) -> None:
        self.lru_only()
        level = self.make(clock, max_entries=2)
        level.set("a", b"a")
        level.set("b", b"b")
        assert "a" in level
        not_a_str: object = 42
        assert not_a_str not in level
        level.set("c", b"c")  # "a" was not refreshed by `in`, so it goes
        assert list(level) == ["b", "c"]
        assert level.stats.hits == level.stats.misses == 0

    def test_popitem_removes_least_recently_used(self, clock: FakeClock) -> None:
        self.lru_only()
        level = self.make(clock)
        level.set("a", b"1")
        level.set("b", b"2")
        level.get("a")
        assert level.popitem() == ("b", b"2")
        assert level.popitem() == ("a", b"1")
        assert level.nbytes == 0
        with pytest.raises(KeyError):
            level.popitem()

    def test_byte_bound_never_exceeded(self, clock: FakeClock) -> None:
        value = b"x" * 100
        one = charge(self.make(clock), "k00", value, expiring=False)
        level = self.make(clock, max_bytes=3 * one + 10)
        for i in range(20):
            level.set(f"k{i:02d}", value)
            assert level.nbytes <= 3 * one + 10
        assert len(level) == 3
        assert level.nbytes == 3 * one
        assert level.stats.evictions == 17

    def test_replace_updates_size(self, clock: FakeClock) -> None:
        level = self.make(clock)
        level.set("k", b"small")
        level.set("k", b"x" * 1000)
        assert level.nbytes == charge(level, "k", b"x" * 1000, expiring=False)
        assert len(level) == 1
        level.set("k", b"", size=7)
        assert level.nbytes == 7 + 1 + level.entry_overhead

    def test_replace_refreshes_recency(self, clock: FakeClock) -> None:
        self.lru_only()
        level = self.make(clock, max_entries=2)
        level.set("a", b"1")
        level.set("b", b"2")
        level.set("a", b"3")
        level.set("c", b"4")
        assert list(level) == ["a", "c"]
        assert level["a"] == b"3"

    def test_oversize_rejected(self, clock: FakeClock) -> None:
        small = charge(self.make(clock), "k", b"ok", expiring=False)
        level = self.make(clock, max_bytes=small + 100)
        assert level.set("k", b"ok") is True
        assert level.set("k", b"x" * 1000) is False
        assert "k" not in level  # the older value is not left behind as if current
        assert level.nbytes == 0
        assert level.stats.rejected == 1
        assert level.set("k2", b"y", size=10**9) is False
        assert level.stats.rejected == 2
        assert len(level) == 0

    # -- TTL ------------------------------------------------------------------------

    def test_entry_expires_after_level_ttl(self, clock: FakeClock) -> None:
        level = self.make(clock, ttl=10.0)
        level.set("k", b"v")
        clock.advance(9.99)
        assert level.get("k") == b"v"
        clock.advance(0.01)
        assert "k" not in level
        assert level.get("k") is None
        stats = level.stats
        assert (stats.hits, stats.misses, stats.expirations) == (1, 1, 1)
        assert stats.entries == 0
        assert level.nbytes == 0

    def test_per_entry_ttl(self, clock: FakeClock) -> None:
        level = self.make(clock)
        level.set("short", b"s", ttl=1.0)
        level.set("long", b"l", ttl=5.0)
        level.set("forever", b"f")
        clock.advance(2.0)
        assert level.get("short") is None
        assert level.get("long") == b"l"
        clock.advance(1000.0)
        assert level.get("long") is None
        assert level.get("forever") == b"f"

    def test_ttl_capped_by_level_ttl(self, clock: FakeClock) -> None:
        level = self.make(clock, ttl=10.0)
        level.set("long", b"l", ttl=100.0)
        level.set("short", b"s", ttl=4.0)
        assert level.get_with_ttl("long") == (b"l", 10.0)
        assert level.get_with_ttl("short") == (b"s", 4.0)

    def test_remaining_ttl_counts_down(self, clock: FakeClock) -> None:
        level = self.make(clock)
        level.set("k", b"v", ttl=8.0)
        level.set("n", b"v")
        clock.advance(3.0)
        assert level.get_with_ttl("k") == (b"v", 5.0)
        assert level.get_with_ttl("n") == (b"v", None)
        clock.advance(5.0)
        assert level.get_with_ttl("k") is None
        assert level.stats.expirations == 1

    @pytest.mark.parametrize("ttl", [0.0, -1.0])
    def test_non_positive_ttl_stores_nothing(self, clock: FakeClock, ttl: float) -> None:
        level = self.make(clock, ttl=10.0)
        level.set("k", b"old")
        assert level.set("k", b"new", ttl=ttl) is False
        assert "k" not in level
        assert level.nbytes == 0
        assert level.stats.rejected == 0

    def test_expiring_entries_are_charged_for_the_heap(self, clock: FakeClock) -> None:
        level = self.make(clock)
        level.set("k", b"v", ttl=5.0)
        assert level.nbytes == charge(level, "k", b"v", expiring=True)

    def test_expire_sweeps_only_expired(self, clock: FakeClock) -> None:
        level = self.make(clock)
        for i in range(10):
            level.set(f"k{i}", b"v", ttl=float(i + 1))
        clock.advance(4.5)
        assert level.expire() == 4
        assert level.expire() == 0
        assert sorted(level) == [f"k{i}" for i in range(4, 10)]
        assert level.stats.expirations == 4
        assert level.nbytes == 6 * charge(level, "k0", b"v", expiring=True)

    def test_len_sweeps_expired(self, clock: FakeClock) -> None:
        level = self.make(clock, ttl=1.0)
        level.set("a", b"1")
        level.set("b", b"2", ttl=5.0)  # capped to 1.0 by the level
        level.set("c", b"3")
        clock.advance(1.0)
        assert list(level) == []
        assert len(level) == 0
        assert level.nbytes == 0

    def test_set_evicts_expired_before_live(self, clock: FakeClock) -> None:
        level = self.make(clock, max_entries=2)
        level.set("old", b"1", ttl=1.0)
        level.set("live", b"2")
        clock.advance(2.0)
        level.set("new", b"3")
        assert sorted(level) == ["live", "new"]
        assert level.stats.expirations == 1
        assert level.stats.evictions == 0

    def test_expiry_heap_stays_bounded(self, clock: FakeClock) -> None:
        level = self.make(clock, max_entries=10, ttl=60.0)
        for i in range(5000):
            level.set(f"k{i % 25}", b"v")
        heap = level._heap  # internal, but the bound is the point of this test
        assert len(heap) <= 2 * len(level) + 64
        for key in list(level):
            assert level.discard(key)
        assert len(level._heap) <= 64
        for i in range(5000):
            level.set(f"k{i % 25}", b"v")
        clock.advance(59.0)
        level.set("late", b"v")
        clock.advance(1.0)
        assert level.expire() == 9  # "late" pushed out one of the ten
        assert list(level) == ["late"]

    # -- removal --------------------------------------------------------------------

    def test_delete_pop_discard(self, clock: FakeClock) -> None:
        level = self.make(clock)
        level.set("a", b"1")
        level.set("b", b"2")
        level.set("c", b"3")
        del level["a"]
        with pytest.raises(KeyError):
            del level["a"]
        assert level.pop("b") == b"2"
        assert level.pop("b", None) is None
        with pytest.raises(KeyError):
            level.pop("b")
        assert level.discard("c") is True
        assert level.discard("c") is False
        assert len(level) == 0
        assert level.nbytes == 0
        assert level.stats.hits == level.stats.misses == 0

    def test_pop_of_expired_is_absent(self, clock: FakeClock) -> None:
        level = self.make(clock)
        level.set("k", b"v", ttl=1.0)
        clock.advance(1.0)
        assert level.pop("k", b"gone") == b"gone"
        assert level.nbytes == 0

    def test_discard_tagged(self, clock: FakeClock) -> None:
        level = self.make(clock)
        level.set("a", b"1", tags=frozenset({"red"}))
        level.set("b", b"2", tags=frozenset({"red", "blue"}))
        level.set("c", b"3", tags=frozenset({"blue"}))
        level.set("d", b"4")
        assert level.discard_tagged("red") == 2
        assert sorted(level) == ["c", "d"]
        assert level.discard_tagged("red") == 0
        assert level.nbytes == sum(charge(level, k, level[k], expiring=False) for k in "cd")

    def test_clear_drops_everything_but_counters(self, clock: FakeClock) -> None:
        level = self.make(clock, ttl=5.0)
        for i in range(10):
            level.set(f"k{i}", b"v")
        level.get("k1")
        level.clear()
        assert len(level) == 0
        assert level.nbytes == 0
        assert level.get("k1") is None
        assert level.stats.hits == 1
        assert level.expire() == 0

    # -- stats ----------------------------------------------------------------------

    def test_counters_and_hit_ratio(self, clock: FakeClock) -> None:
        level = self.make(clock, max_entries=2)
        assert level.stats.hit_ratio == 0.0
        level.set("a", b"1")
        level.set("b", b"2")
        level.set("c", b"3")
        for key in ("b", "c", "c", "a"):
            level.get(key)
        stats = level.stats
        assert isinstance(stats, LevelStats)
        assert (stats.hits, stats.misses, stats.evictions) == (3, 1, 1)
        assert stats.hit_ratio == 0.75
        assert (stats.entries, stats.max_entries, stats.max_bytes) == (2, 2, None)
        assert stats.bytes == level.nbytes
        assert stats.name == "test"
        level.reset_stats()
        after = level.stats
        assert (after.hits, after.misses, after.evictions, after.hit_ratio) == (0, 0, 0, 0.0)
        assert after.entries == 2

    def test_on_evict_reports_reason(self, clock: FakeClock) -> None:
        self.lru_only()
        level = self.make(clock, max_entries=2)
        seen: list[tuple[str, str]] = []
        level.on_evict = lambda key, reason: seen.append((key, reason))
        level.set("a", b"1", ttl=1.0)
        level.set("b", b"2")
        level.set("c", b"3")
        level.set("d", b"4", ttl=1.0)
        clock.advance(1.0)
        assert level.get("d") is None
        del level["c"]
        assert seen == [("a", EVICTED), ("b", EVICTED), ("d", EXPIRED)]

    # -- mapping behaviour ----------------------------------------------------------

    def test_mutable_mapping_behaviour(self, clock: FakeClock) -> None:
        level = self.make(clock)
        level["a"] = b"1"
        level.update({"b": b"2", "c": b"3"})
        assert level.setdefault("a", b"zzz") == b"1"  # a lookup: "a" becomes most recent
        if self.policy == LRU:
            assert list(level.keys()) == ["b", "c", "a"]
        assert sorted(level.keys()) == ["a", "b", "c"]
        assert dict(level.items()) == {"a": b"1", "b": b"2", "c": b"3"}
        assert sorted(level.values()) == [b"1", b"2", b"3"]
        assert level == {"a": b"1", "b": b"2", "c": b"3"}

    def test_iteration_is_a_snapshot(self, clock: FakeClock) -> None:
        level = self.make(clock)
        for i in range(5):
            level.set(f"k{i}", b"v")
        for key in level:
            del level[key]  # no "changed size during iteration"
        assert len(level) == 0

    def test_read_only_configuration(self, clock: FakeClock) -> None:
        level = self.make(clock, max_entries=7, max_bytes=10_000, ttl=3.0)
        assert (level.name, level.max_entries, level.max_bytes, level.ttl) == (
            "test",
            7,
            10_000,
            3.0,
        )
        with pytest.raises(AttributeError):
            level.ttl = 5.0  # type: ignore[misc]
        assert "max_entries=7" in repr(level)
