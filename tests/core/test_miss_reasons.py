"""Every computation counted with why its value was missing, over the stub fleet.

Each test makes one reason happen (or one duplicate computation) and reads the
cache's :class:`~tiercel.core.cache.miss_book.MissBook`. The Lua side of the
same records runs against real Redis in tests/integration/test_miss_history.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from tiercel.core.cache import miss_reasons as why
from tiercel.core.cache.memoize import NAMESPACE_SCOPE, CachedFunction, function_scope
from tiercel.core.cache.miss_book import MissBook, generation_moves, task_of
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.cache.stub_fleet import StubFleet
from tiercel.core.encoding.cache_key import CacheKey
from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
from tiercel.core.errors import KeyEncodingError
from tiercel.core.local.memory_level import MemoryLevel
from tiercel.core.metrics.collectors import cache_samples
from tiercel.core.metrics.names import DUPLICATE_COMPUTATIONS, MISSES
from tiercel.core.tier.generations import Generations
from tiercel.core.tier.history import History
from tiercel.core.tier.leases import Lease
from tiercel.core.tier.stub import StubStore, StubTier

SERIALIZER = Serializer(MsgpackCodec())
TASK = "tests.square"
KEY = CacheKey.build("ns", TASK, "1", "abc").value
OTHER_KEY = CacheKey.build("ns", TASK, "1", "def").value


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Process:
    """One simulated process: no local levels unless given, the stub tier and fleet."""

    def __init__(self, store: StubStore, *, lease_ttl: float = 5.0, levels: Any = ()) -> None:
        self.tier = StubTier(store, SERIALIZER)
        self.fleet = StubFleet(store, lease_ttl=lease_ttl, max_wait=5.0)
        self.cache = MultiLevelCache(
            serializer=SERIALIZER,
            levels=list(levels),
            tier=self.tier,
            fleet=self.fleet,
            wall_clock=store.clock,
        )

    def compute(self, key: str = KEY, value: Any = 1, **options: Any) -> Any:
        options.setdefault("ttl", 60)
        return self.cache.get_or_compute(key, compute=lambda: value, **options)

    def misses(self) -> dict[tuple[str, str], int]:
        return self.cache.misses.misses()

    def duplicates(self) -> dict[tuple[str, str], int]:
        return self.cache.misses.duplicates()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> StubStore:
    return StubStore(clock=clock)


def test_a_key_never_stored_is_a_first_computation(store: StubStore) -> None:
    process = Process(store)
    process.compute()
    process.compute()  # a hit: not counted
    assert process.misses() == {(TASK, why.FIRST_COMPUTATION): 1}
    assert process.duplicates() == {}


def test_a_value_whose_ttl_ran_out_is_expired(store: StubStore, clock: Clock) -> None:
    process = Process(store)
    process.compute(ttl=10)
    clock.now += 11
    process.compute(ttl=10)
    assert process.misses() == {(TASK, why.FIRST_COMPUTATION): 1, (TASK, why.EXPIRED_VALUE): 1}
    assert process.duplicates() == {}


def test_a_value_gone_before_its_expiry_was_evicted_by_redis_and_is_a_duplicate(
    store: StubStore,
) -> None:
    writer, reader = Process(store), Process(store)
    writer.compute()
    del store.values[KEY]  # maxmemory eviction
    reader.compute()
    assert reader.misses() == {(TASK, why.EVICTED_REDIS): 1}
    assert reader.duplicates() == {(TASK, why.VALUE_EVICTED): 1}


def test_invalidation_by_key_and_by_tag_are_told_apart(store: StubStore) -> None:
    process = Process(store)
    process.compute(tags=("t",))
    process.cache.invalidate(KEY)
    process.compute(tags=("t",))
    process.cache.invalidate_tag("t")
    process.compute(tags=("t",))
    assert process.misses() == {
        (TASK, why.FIRST_COMPUTATION): 1,
        (TASK, why.INVALIDATED_KEY): 1,
        (TASK, why.INVALIDATED_TAG): 1,
    }


def _wired(process: Process, generations: Generations) -> None:
    process.cache.misses.generation_moved = generation_moves(
        generations.moved_ago, function_scope, NAMESPACE_SCOPE
    )


def test_a_generation_bump_names_the_misses_after_it(store: StubStore) -> None:
    process = Process(store)
    timer = Clock()
    generations = Generations(process.tier, timer=timer)
    _wired(process, generations)
    spec: CachedFunction[Any, Any] = CachedFunction(lambda x: x * x, name=TASK)
    assert spec.call(process.cache, generations, "ns", (3,), {}).source == "computed"
    generations.bump(function_scope(TASK))
    assert spec.call(process.cache, generations, "ns", (3,), {}).source == "computed"
    generations.bump(NAMESPACE_SCOPE)
    spec.call(process.cache, generations, "ns", (3,), {})
    timer.now += 10_000  # far past the value's TTL: a new key is a first computation again
    spec.call(process.cache, generations, "ns", (4,), {})
    assert process.misses() == {
        (TASK, why.FIRST_COMPUTATION): 2,
        (TASK, why.INVALIDATED_VERSION): 1,
        (TASK, why.INVALIDATED_NAMESPACE): 1,
    }


def test_an_announced_generation_counts_as_a_move(store: StubStore) -> None:
    generations = Generations(StubTier(store, SERIALIZER))
    assert generations.moved_ago(NAMESPACE_SCOPE) is None
    generations.observe(NAMESPACE_SCOPE, 7)
    assert generations.moved_ago(NAMESPACE_SCOPE) is not None


def test_a_key_evicted_from_a_local_level_and_never_shared_is_evicted_local() -> None:
    cache = MultiLevelCache(
        serializer=SERIALIZER, levels=[MemoryLevel("l1", max_entries=1, policy="lru")]
    )
    cache.get_or_compute(KEY, compute=lambda: 1)
    cache.get_or_compute(OTHER_KEY, compute=lambda: 2)  # evicts KEY
    cache.get_or_compute(KEY, compute=lambda: 1)
    assert cache.misses.misses() == {
        (TASK, why.FIRST_COMPUTATION): 2,
        (TASK, why.EVICTED_LOCAL): 1,
    }


def test_redis_knowledge_wins_over_a_local_eviction(store: StubStore, clock: Clock) -> None:
    process = Process(store, levels=[MemoryLevel("l1", max_entries=1, timer=clock, policy="lru")])
    process.compute(ttl=10)
    process.compute(OTHER_KEY, ttl=10)  # evicts KEY from the level; Redis still has it
    clock.now += 11
    process.compute(ttl=10)
    assert process.misses()[(TASK, why.EXPIRED_VALUE)] == 1
    assert (TASK, why.EVICTED_LOCAL) not in process.misses()


def test_a_refresh_is_counted_as_one(store: StubStore) -> None:
    process = Process(store)
    process.compute()
    process.cache.refresh(KEY, compute=lambda: 2, ttl=60)
    assert process.misses()[(TASK, why.REFRESH)] == 1


def test_an_unencodable_argument_is_counted_for_its_task(store: StubStore) -> None:
    process = Process(store)
    spec: CachedFunction[Any, Any] = CachedFunction(lambda x: x, name=TASK)
    with pytest.raises(KeyEncodingError):
        spec.call(process.cache, Generations(process.tier), "ns", (object(),), {})
    assert process.misses() == {(TASK, why.UNCACHEABLE_ARGUMENT): 1}


def test_a_failed_computation_makes_the_next_miss_error_not_cached(store: StubStore) -> None:
    failing, other = Process(store), Process(store)

    def boom() -> Any:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        failing.cache.get_or_compute(KEY, compute=boom, ttl=60)
    other.compute()  # another process: the shared record says why
    assert failing.misses() == {(TASK, why.FIRST_COMPUTATION): 1}
    assert other.misses() == {(TASK, why.ERROR_NOT_CACHED): 1}


def test_a_failure_without_a_shared_tier_is_remembered_locally() -> None:
    cache = MultiLevelCache(serializer=SERIALIZER)

    def boom() -> Any:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        cache.get_or_compute(KEY, compute=boom)
    cache.get_or_compute(KEY, compute=lambda: 1)
    assert cache.misses.misses()[(TASK, why.ERROR_NOT_CACHED)] == 1


def test_a_computation_with_the_tier_down_is_unavailable_and_a_duplicate(
    store: StubStore,
) -> None:
    process = Process(store)
    store.down = True
    assert process.compute().value == 1
    assert process.misses() == {(TASK, why.TIER_UNAVAILABLE): 1}
    assert process.duplicates() == {(TASK, why.NO_LEASE): 1}


def test_a_lease_takeover_is_a_duplicate() -> None:
    store = StubStore()  # the real clock: the dead holder's lease runs out
    gone, waiter = Process(store, lease_ttl=0.1), Process(store, lease_ttl=0.1)
    lease = gone.fleet.claim(KEY, ttl=60, tags=(), inflight_id=None, unless_present=True)
    assert isinstance(lease, Lease)  # taken, never renewed nor released: the holder died
    waiter.compute()
    assert waiter.misses() == {(TASK, why.FIRST_COMPUTATION): 1}
    assert waiter.duplicates() == {(TASK, why.LEASE_EXPIRED): 1}


def test_counts_are_bounded_per_task() -> None:
    book = MissBook(max_series=2)
    for name in ("a", "b", "c", "d"):
        book.miss(CacheKey.build("ns", name, "1", "x").value, why.FIRST_COMPUTATION)
    assert book.misses() == {
        ("a", why.FIRST_COMPUTATION): 1,
        ("b", why.FIRST_COMPUTATION): 1,
        ("_other", why.FIRST_COMPUTATION): 2,
    }
    assert task_of("not a tiercel key") == "_other"
    book.duplicate(CacheKey.build("ns", "a", "1", "x").value, why.LEASE_EXPIRED)
    series = book.duplicate_series()
    assert len(series) == 2 and series[("a", why.LEASE_EXPIRED)] == 1  # zeros bounded too


def test_local_fates_are_bounded() -> None:
    book = MissBook(max_fates=2)
    for key in ("a", "b", "c"):
        book.left_level(key, "evicted")
    assert book.explain("a", None, 60) == why.FIRST_COMPUTATION  # forgotten first
    assert book.explain("c", None, 60) == why.EVICTED_LOCAL
    assert book.explain("c", None, 60) == why.FIRST_COMPUTATION  # a fate explains once


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ("w|100|200", why.EXPIRED_VALUE),
        ("w|100|300", why.EVICTED_REDIS),
        ("k|100", why.INVALIDATED_KEY),
        ("t|100", why.INVALIDATED_TAG),
        ("f|100", why.ERROR_NOT_CACHED),
    ],
)
def test_each_history_record_names_its_reason(record: str, expected: str) -> None:
    history = History.decode(record.encode(), b"250")
    assert history is not None and history.encode() == record
    assert why.classify(history, why.EVICTED, "invalidated_version") == expected


@pytest.mark.parametrize("raw", [None, b"", b"x|1", b"w|1", b"k|1|2", b"k|nope", "w|a|b"])
def test_an_unreadable_record_says_nothing(raw: Any) -> None:
    assert History.decode(raw, 5) is None


def test_the_collector_reports_reasons_and_causes_by_task(store: StubStore) -> None:
    process = Process(store)
    process.compute()
    store.down = True
    process.compute(OTHER_KEY)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for sample in cache_samples(process.cache.stats())
        if sample.name in (MISSES, DUPLICATE_COMPUTATIONS)
    }
    assert samples == {
        (MISSES, (("reason", why.FIRST_COMPUTATION), ("task", TASK))): 1,
        (MISSES, (("reason", why.TIER_UNAVAILABLE), ("task", TASK))): 1,
        (DUPLICATE_COMPUTATIONS, (("cause", why.NO_LEASE), ("task", TASK))): 1,
        # every cause of a task that missed is served, zero until it happens
        (DUPLICATE_COMPUTATIONS, (("cause", why.LEASE_EXPIRED), ("task", TASK))): 0,
        (DUPLICATE_COMPUTATIONS, (("cause", why.VALUE_EVICTED), ("task", TASK))): 0,
    }
