"""Property tests of the local levels: random operation sequences against a reference model.

The LRU policy runs against a model: a plain ordered list of entries that finds the oldest one by
position and expired ones by scanning: slow and obviously right. After every
operation the level and the model must agree on keys (in LRU order), values,
charged bytes and counters, and the bounds must hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.level_suite import FakeClock
from tiercel.core.local.bytes_level import BytesLevel
from tiercel.core.local.cache_level import ENTRY_OVERHEAD, LRU, CacheLevel
from tiercel.core.local.expiry import EXPIRY_OVERHEAD
from tiercel.core.local.memory_level import MemoryLevel

KEYS = st.sampled_from([f"k{i}" for i in range(12)])
TTLS = st.one_of(st.none(), st.floats(min_value=-1.0, max_value=10.0, allow_nan=False))
VALUES = st.binary(max_size=300)

OPS = st.one_of(
    st.tuples(st.just("set"), KEYS, VALUES, TTLS, st.frozensets(st.sampled_from("ab"))),
    st.tuples(st.just("get"), KEYS),
    st.tuples(st.just("get_with_ttl"), KEYS),
    st.tuples(st.just("delete"), KEYS),
    st.tuples(st.just("advance"), st.floats(min_value=0.0, max_value=4.0)),
    st.tuples(st.just("expire")),
    st.tuples(st.just("len")),
    st.tuples(st.just("discard_tagged"), st.sampled_from("ab")),
)


@dataclass
class Model:
    """The reference: entries oldest first, as [key, value, expires_at, size, tags]."""

    max_entries: int
    max_bytes: int | None
    ttl: float | None
    entries: list[list[Any]] = field(default_factory=list)
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    expirations: int = 0

    def find(self, key: str) -> int | None:
        for i, entry in enumerate(self.entries):
            if entry[0] == key:
                return i
        return None

    def nbytes(self) -> int:
        return sum(entry[3] for entry in self.entries)

    def sweep(self, now: float) -> int:
        expired = [e for e in self.entries if e[2] is not None and e[2] <= now]
        self.entries = [e for e in self.entries if e not in expired]
        self.expirations += len(expired)
        return len(expired)

    def set(
        self, key: str, value: Any, ttl: float | None, size: int, tags: frozenset[str], now: float
    ) -> bool:
        if ttl is None or (self.ttl is not None and self.ttl < ttl):
            ttl = self.ttl
        if ttl is not None:
            size += EXPIRY_OVERHEAD
        old = self.find(key)
        if old is not None:
            del self.entries[old]
        if (ttl is not None and ttl <= 0) or (self.max_bytes is not None and size > self.max_bytes):
            return False
        self.entries.append([key, value, None if ttl is None else now + ttl, size, tags])
        self.sweep(now)
        while len(self.entries) > self.max_entries or (
            self.max_bytes is not None and self.nbytes() > self.max_bytes
        ):
            del self.entries[0]
            self.evictions += 1
        # A ttl too small to move the clock's float expires at once: not stored.
        return self.find(key) is not None

    def get(self, key: str, now: float) -> tuple[Any, float | None] | None:
        i = self.find(key)
        if i is None:
            self.misses += 1
            return None
        entry = self.entries[i]
        if entry[2] is not None and entry[2] <= now:
            del self.entries[i]
            self.expirations += 1
            self.misses += 1
            return None
        self.entries.append(self.entries.pop(i))
        self.hits += 1
        return entry[1], None if entry[2] is None else entry[2] - now

    def live_keys(self, now: float) -> list[str]:
        return [e[0] for e in self.entries if e[2] is None or e[2] > now]


def check(level: CacheLevel[Any], model: Model, clock: FakeClock) -> None:
    assert level.nbytes == model.nbytes()
    # list(iter(...)), not list(level): list() asks len(level), which sweeps expired entries.
    assert list(iter(level)) == model.live_keys(clock.now)
    stats = level.stats
    assert stats.entries <= level.max_entries
    assert level.max_bytes is None or stats.bytes <= level.max_bytes
    assert (stats.hits, stats.misses, stats.evictions, stats.expirations) == (
        model.hits,
        model.misses,
        model.evictions,
        model.expirations,
    )
    # The heap's stale items stay bounded (set, delete and discard_tagged rebuild it).
    assert len(level._heap) <= 2 * level.max_entries + 64 + 1


@pytest.mark.parametrize("kind", [MemoryLevel, BytesLevel])
@settings(max_examples=300, deadline=None)
@given(
    max_entries=st.integers(min_value=1, max_value=8),
    max_bytes=st.one_of(st.none(), st.integers(min_value=1, max_value=6 * 1000)),
    level_ttl=st.one_of(st.none(), st.floats(min_value=0.5, max_value=8.0)),
    ops=st.lists(OPS, max_size=60),
    heap_slack=st.sampled_from([0, 64]),
)
def test_level_agrees_with_model(
    kind: type[CacheLevel[Any]],
    max_entries: int,
    max_bytes: int | None,
    level_ttl: float | None,
    ops: list[tuple[Any, ...]],
    heap_slack: int,
) -> None:
    # With no slack the expiry heap is rebuilt as soon as it holds 2x the live
    # entries, so short sequences exercise the rebuild too.
    with mock.patch("tiercel.core.local.expiry._HEAP_MIN", heap_slack):
        run_against_model(kind, max_entries, max_bytes, level_ttl, ops)


def run_against_model(
    kind: type[CacheLevel[Any]],
    max_entries: int,
    max_bytes: int | None,
    level_ttl: float | None,
    ops: list[tuple[Any, ...]],
) -> None:
    clock = FakeClock()
    level = kind(
        "prop", max_entries=max_entries, max_bytes=max_bytes, ttl=level_ttl, timer=clock, policy=LRU
    )
    model = Model(max_entries, max_bytes, level_ttl)
    for op in ops:
        name = op[0]
        if name == "set":
            _, key, value, ttl, tags = op
            size = level.getsizeof(value) + len(key) + ENTRY_OVERHEAD
            expected = model.set(key, value, ttl, size, tags, clock.now)
            assert level.set(key, value, ttl=ttl, tags=tags) is expected
        elif name == "get":
            found = model.get(op[1], clock.now)
            assert level.get(op[1], "MISS") == ("MISS" if found is None else found[0])
        elif name == "get_with_ttl":
            assert level.get_with_ttl(op[1]) == model.get(op[1], clock.now)
        elif name == "delete":
            i = model.find(op[1])
            live = i is not None and op[1] in model.live_keys(clock.now)
            if i is not None:
                del model.entries[i]
            assert level.discard(op[1]) is live
        elif name == "advance":
            clock.advance(op[1])
        elif name == "expire":
            assert level.expire() == model.sweep(clock.now)
        elif name == "len":
            model.sweep(clock.now)
            assert len(level) == len(model.entries)
        else:
            tagged = [e for e in model.entries if op[1] in e[4]]
            model.entries = [e for e in model.entries if op[1] not in e[4]]
            assert level.discard_tagged(op[1]) == len(tagged)
        check(level, model, clock)


@given(
    ttl=st.floats(min_value=0.001, max_value=1e6),
    fraction=st.floats(min_value=0.0, max_value=0.999),
    value=st.one_of(st.none(), st.integers(), st.binary(), st.text()),
    noise=st.lists(KEYS, max_size=10),
)
def test_get_within_ttl_returns_value(
    ttl: float, fraction: float, value: Any, noise: list[str]
) -> None:
    """Without eviction pressure, a value set is returned until its ttl has run out."""
    clock = FakeClock()
    level = MemoryLevel("prop", max_entries=100, ttl=ttl, timer=clock)
    level.set("target", value)
    for key in noise:
        level.set(key, key)
    clock.advance(ttl * fraction)
    if clock.now < 1000.0 + ttl:  # float rounding may land exactly on the deadline
        assert level.get("target", "MISS") == value
