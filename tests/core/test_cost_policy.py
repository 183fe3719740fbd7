"""The levels' cost policy: what it keeps, what a scan does to it, and its bounds.

Each behaviour is checked against LRU on the same sequence where LRU does
otherwise, so a cost policy that quietly degraded to LRU would fail here.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.level_suite import FakeClock
from tiercel.core.local.bytes_level import BytesLevel
from tiercel.core.local.cache_level import COST, EVICTED, EXPIRED, LRU, CacheLevel
from tiercel.core.local.frequency_sketch import MAX_COUNT, SAMPLE_FACTOR, FrequencySketch
from tiercel.core.local.memory_level import MemoryLevel


def check_invariants(level: CacheLevel[Any]) -> None:
    """Bounds hold, bytes add up, and the window and the main list hold exactly the
    entries, each main entry at the index it records."""
    data = level._data
    assert len(data) <= level.max_entries
    assert level.nbytes == sum(entry[2] for entry in data.values())
    if level.max_bytes is not None:
        assert level.nbytes <= level.max_bytes
    if level.policy == COST:
        window, main = level._window, level._main
        assert window is not None
        assert len(window) + len(main) == len(data)
        for key, entry in data.items():
            if entry[4] < 0:
                assert key in window
            else:
                assert main[entry[4]] == key
        assert level._window_used == sum(data[key][2] for key in window)


def test_default_policy_is_cost() -> None:
    assert MemoryLevel("l1", max_entries=10).policy == COST
    assert BytesLevel("l2", max_entries=10).policy == COST


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="policy"):
        MemoryLevel("l1", max_entries=10, policy="fifo")


@pytest.mark.parametrize("policy", [COST, LRU])
def test_a_costly_entry_survives_cheaper_ones(policy: str) -> None:
    """Keys asked for in a cycle 1.5x the level's size: LRU keeps none of them long
    enough to hit; the cost policy keeps the one that is expensive to compute."""
    level = MemoryLevel("l1", max_entries=100, policy=policy)
    keys = ["costly"] + [f"cheap{i}" for i in range(149)]
    costly_hits = 0
    for _ in range(6):
        for key in keys:
            if level.get(key) is not None:
                costly_hits += key == "costly"
            else:
                level.set(key, key, cost=30.0 if key == "costly" else 0.01)
        check_invariants(level)
    if policy == COST:
        assert costly_hits >= 4
        assert "costly" in level
    else:
        assert costly_hits == 0
        assert "costly" not in level


@pytest.mark.parametrize("policy", [COST, LRU])
def test_a_scan_of_ten_times_the_capacity_leaves_the_hot_set(policy: str) -> None:
    level = MemoryLevel("l1", max_entries=100, policy=policy)
    hot = [f"hot{i}" for i in range(50)]
    for _ in range(5):
        for key in hot:
            if level.get(key) is None:
                level.set(key, key, cost=0.05)
    rng = random.Random(3)
    for i in range(10 * level.max_entries):
        key = f"scan{i}"
        assert level.get(key) is None
        level.set(key, i, cost=rng.uniform(0.05, 5.0))  # even costlier than the hot keys
    check_invariants(level)
    resident = sum(1 for key in hot if key in level) / len(hot)
    if policy == COST:
        assert resident >= 0.9
    else:
        assert resident == 0.0


def test_lru_policy_ignores_cost() -> None:
    level = MemoryLevel("l1", max_entries=3, policy=LRU)
    level.set("a", 1, cost=100.0)
    level.set("b", 2, cost=0.001)
    level.set("c", 3, cost=0.001)
    level.get("b")
    level.set("d", 4, cost=0.001)
    assert list(level) == ["c", "b", "d"]


@pytest.mark.parametrize("policy", [COST, LRU])
def test_weight_is_per_byte_where_the_byte_bound_binds(policy: str) -> None:
    """Equal cost and frequency: the larger entry saves less per byte and goes first."""
    level = BytesLevel("l2", max_entries=1000, max_bytes=60_000, policy=policy)
    level.set("small", b"x" * 2_000, cost=1.0)
    level.set("big", b"x" * 20_000, cost=1.0)
    level.set("filler", b"y" * 1_000, cost=1.0)  # both now in the main region
    assert level.popitem()[0] == ("big" if policy == COST else "small")
    check_invariants(level)


def test_weight_is_per_entry_where_only_entries_bind() -> None:
    level = MemoryLevel("l1", max_entries=10)
    level.set("small", "s", size=10, cost=1.0)
    level.set("big", "b", size=10**6, cost=1.0)
    assert level._data["small"][5] == level._data["big"][5] == 1.0
    level.set("costly", "c", size=10, cost=4.0)
    assert level._data["costly"][5] == 2.0  # the square root of the cost


def test_unknown_cost_is_the_mean_of_known_costs() -> None:
    level = MemoryLevel("l1", max_entries=10)
    level.set("a", 1, cost=2.0)
    level.set("b", 2, cost=4.0)
    level.set("c", 3)
    assert level._data["c"][5] == pytest.approx(3.0**0.5)  # the square root of the mean
    fresh = MemoryLevel("l1", max_entries=10)
    fresh.set("x", 1)
    assert fresh._data["x"][5] == 1.0


def test_a_window_hit_counts_towards_admission() -> None:
    level = MemoryLevel("l1", max_entries=100)
    for i in range(99):
        level.set(f"old{i}", i, cost=1.0)
    level.set("reused", "r", cost=1.0)
    assert level.get("reused") == "r"  # hit while in the window
    level.set("next", "n", cost=1.0)  # pushes "reused" out of the window
    assert "reused" in level
    level.set("once", "o", cost=1.0)  # pushes "next" out: seen once, not admitted
    assert "next" not in level


def test_every_hit_is_counted_wherever_the_entry_lives() -> None:
    """In the window a hit counts in the sketch; in the main region in the entry's own
    use count, which starts at the sketch's count and halves when the sketch does."""
    level = MemoryLevel("l1", max_entries=1000)
    level.set("k", 1)
    for _ in range(50):
        assert level.get("k") == 1  # in the window
    assert level._sketch.estimate("k") == 51
    for i in range(20):
        level.set(f"other{i}", i)  # push "k" into the main region
    place = level._data["k"][4]
    assert place >= 0 and level._uses[place] == 51
    level.get("k")
    assert level._uses[place] == 52
    level._halve_uses()
    assert level._uses[place] == 26
    check_invariants(level)


def test_a_frequent_cheap_key_outscores_an_expensive_key_seen_twice() -> None:
    """Score ``frequency x sqrt(cost)``: 40 uses at 10 ms beat 2 uses at 1 s (a ``frequency
    x cost`` ranking would keep the expensive one)."""
    level = MemoryLevel("l1", max_entries=100)
    for i in range(99):
        level.set(f"cheap{i}", i, cost=0.01)
        for _ in range(39):
            level.get(f"cheap{i}")
    level.set("rare", "r", cost=1.0)
    level.get("rare")  # seen twice
    level.set("push", "p", cost=0.01)  # "rare" leaves the window and duels a cheap key
    assert "rare" not in level
    assert sum(f"cheap{i}" in level for i in range(99)) == 99
    check_invariants(level)


def test_on_evict_reasons_and_expiry_under_cost() -> None:
    clock = FakeClock()
    level = MemoryLevel("l1", max_entries=2, timer=clock)
    seen: list[tuple[str, str]] = []
    level.on_evict = lambda key, reason: seen.append((key, reason))
    level.set("a", 1, ttl=1.0)
    level.set("b", 2)
    level.set("c", 3)  # "b" leaves the window and is not admitted over "a"
    assert seen == [("b", EVICTED)]
    clock.advance(1.0)
    level.set("d", 4)  # "a" expired: swept first, nothing live is evicted for room
    assert seen == [("b", EVICTED), ("a", EXPIRED)]
    assert sorted(level) == ["c", "d"]
    assert level.stats.expirations == 1
    assert level.stats.evictions == 1
    level.set("e", 5, ttl=2.0)
    clock.advance(2.0)
    assert level.get("e") is None
    assert seen[-1] == ("e", EXPIRED)
    check_invariants(level)


def test_the_victims_are_the_lowest_scores_drawn_from_the_main_region() -> None:
    """Equal counts, half the entries 10,000x cheaper, stored interleaved: the first
    50 victims are (nearly) all cheap ones, where recency would take half of each."""
    level = MemoryLevel("l1", max_entries=200)
    for i in range(200):
        level.set(f"k{i}", i, cost=1e-4 if i % 2 else 1.0)
        level.get(f"k{i}")
    level.set("last", None)  # the window's overflow moves to the main region
    check_invariants(level)
    victims = [level.popitem()[0] for _ in range(50)]
    cheap = sum(int(key[1:]) % 2 == 1 for key in victims if key != "last")
    assert cheap >= 45
    check_invariants(level)


def test_popitem_empties_a_cost_level() -> None:
    level = BytesLevel("l2", max_entries=50, max_bytes=10**6)
    for i in range(50):
        level.set(f"k{i}", b"v" * i, cost=float(i))
    level.get("k10")
    popped = [level.popitem()[0] for _ in range(50)]
    assert sorted(popped) == sorted(f"k{i}" for i in range(50))
    assert level.nbytes == 0
    with pytest.raises(KeyError):
        level.popitem()


def test_sketch_counts_saturate_and_halve() -> None:
    sketch = FrequencySketch(16, sample_factor=SAMPLE_FACTOR)
    for _ in range(MAX_COUNT + 40):
        sketch.add("hot")
    assert sketch.estimate("hot") == MAX_COUNT
    assert sketch.estimate("never") == 0
    for i in range(16 * SAMPLE_FACTOR):  # past the sample: every counter halves
        sketch.add(f"k{i}")
    assert sketch.estimate("hot") == MAX_COUNT // 2
    sketch.clear()
    assert sketch.estimate("hot") == 0


OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("set"),
            st.integers(0, 30),
            st.integers(0, 3000),
            st.one_of(st.none(), st.floats(0.0, 10.0)),
            st.one_of(st.none(), st.floats(0.5, 5.0)),
        ),
        st.tuples(st.just("get"), st.integers(0, 30)),
        st.tuples(st.just("discard"), st.integers(0, 30)),
        st.tuples(st.just("advance"), st.floats(0.0, 3.0)),
        st.tuples(st.just("popitem")),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(
    max_entries=st.integers(1, 12),
    max_bytes=st.one_of(st.none(), st.integers(4000, 20_000)),
    ops=OPS,
)
def test_cost_level_keeps_its_invariants(
    max_entries: int, max_bytes: int | None, ops: list[tuple[Any, ...]]
) -> None:
    clock = FakeClock()
    level = BytesLevel("prop", max_entries=max_entries, max_bytes=max_bytes, timer=clock)
    latest: dict[str, tuple[bytes, float]] = {}  # key -> (value, expires)
    for op in ops:
        if op[0] == "set":
            _, n, size, cost, ttl = op
            key, value = f"k{n}", bytes(size)
            if level.set(key, value, ttl=ttl, cost=cost):
                latest[key] = (value, clock.now + ttl if ttl is not None else float("inf"))
            else:
                latest.pop(key, None)
        elif op[0] == "get":
            key = f"k{op[1]}"
            found = level.get(key)
            if found is not None:  # never a stale or expired value
                value, expires = latest[key]
                assert found == value
                assert clock.now < expires
        elif op[0] == "discard":
            latest.pop(f"k{op[1]}", None)
            level.discard(f"k{op[1]}")
        elif op[0] == "advance":
            clock.advance(op[1])
        else:
            try:
                latest.pop(level.popitem()[0], None)
            except KeyError:
                assert len(level._data) == 0
        check_invariants(level)


def test_the_cache_gives_its_levels_the_compute_seconds() -> None:
    """A computed value reaches the levels with its cost; a Redis hit with the cost the
    entry carries; ``add_level`` builds levels with the policy it is given."""
    from tiercel.core.cache.multilevel import MultiLevelCache
    from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
    from tiercel.core.tier.stub import StubStore, StubTier

    serializer = Serializer(MsgpackCodec())
    store = StubStore()
    writer = MultiLevelCache(serializer=serializer, tier=StubTier(store, serializer))
    memory = writer.add_level("memory", None, 100)
    raw = writer.add_level("bytes", None, 100, kind="bytes", max_bytes=2**20)
    writer.set("k", [1, 2], compute_seconds=2.5)
    assert memory._data["k"][5] == raw._data["k"][5] == 2.5**0.5
    reader = MultiLevelCache(serializer=serializer, tier=StubTier(store, serializer))
    near = reader.add_level("memory", None, 100, policy=LRU)
    assert near.policy == LRU
    fresh = reader.add_level("other", None, 100)
    assert reader.lookup("k") is not None
    assert "k" in near
    assert fresh._data["k"][5] == 2.5**0.5


def test_use_counts_forget_while_every_key_is_resident() -> None:
    """A level that stores nothing new still ages its counts: once as many hits as the
    sketch's sample have passed, the next count halves them all."""
    level = MemoryLevel("l1", max_entries=100)
    for i in range(100):
        level.set(f"k{i}", i)
    place = level._data["k0"][4]
    assert place >= 0
    sample = level._sketch.sample
    for _ in range(sample // 2):
        level.get("k0")
        level.get("k1")
    before = level._uses[place]
    assert before > sample // 2
    level.discard("k99")
    level.set("new", "n")  # the first count since: every count ages
    assert level._uses[level._data["k0"][4]] == before // 2
    check_invariants(level)


def test_a_candidate_duels_a_window_victim_by_that_entrys_own_count() -> None:
    """With the main region holding only the candidate, the victim comes from the window
    and is scored by its own sketch count: "a", used twice, stays over "b", used once."""
    level = MemoryLevel("l1", max_entries=1)
    level.set("a", 1, cost=1.0)
    assert level.get("a") == 1  # counted twice
    assert level.set("b", 2, cost=1.0) is False  # "a" leaves the window and wins the duel
    assert "a" in level and "b" not in level
    check_invariants(level)
