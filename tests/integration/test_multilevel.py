"""The multi-level cache: promotion, single-flight, write-through, invalidation, outages."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import redis

from tests.core.level_suite import FakeClock
from tiercel.core.cache.memoize import cached
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.embedded.redis_server import RedisServer
from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
from tiercel.core.local.bytes_level import BytesLevel
from tiercel.core.local.memory_level import MemoryLevel
from tiercel.core.tier.generations import Generations
from tiercel.core.tier.redis_tier import RedisTier

SERIALIZER = Serializer(MsgpackCodec())


class WallClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def make_cache(
    url: str, clock: FakeClock | None = None, wall: WallClock | None = None
) -> MultiLevelCache:
    timer = clock or FakeClock()
    wall_clock = wall or time.time
    tier = RedisTier.from_url(url, serializer=SERIALIZER, namespace="mlc", wall_clock=wall_clock)
    return MultiLevelCache(
        serializer=SERIALIZER,
        levels=[
            MemoryLevel("memory", max_entries=100, ttl=300, timer=timer),
            BytesLevel("bytes", max_entries=100, max_bytes=2**20, ttl=3600, timer=timer),
        ],
        tier=tier,
        wall_clock=wall_clock,
    )


def test_sources_walk_down_the_tiers(cache_url: str) -> None:
    cache = make_cache(cache_url)
    cache.set("k", {"v": 1}, ttl=60)
    assert cache.lookup("k").source == "memory"  # type: ignore[union-attr]
    cache.levels[0].clear()
    assert cache.lookup("k").source == "bytes"  # type: ignore[union-attr]
    assert cache.lookup("k").source == "memory"  # type: ignore[union-attr]  # promoted
    cache.clear_local()
    assert cache.lookup("k").source == "redis"  # type: ignore[union-attr]
    assert cache.lookup("k").source == "memory"  # type: ignore[union-attr]


def test_promotion_never_outlives_the_remaining_ttl(cache_url: str) -> None:
    wall = WallClock()
    writer = make_cache(cache_url, wall=wall)
    writer.set("k", "v", ttl=100)
    clock = FakeClock()
    reader = make_cache(cache_url, clock=clock, wall=wall)
    wall.now += 90  # 10 s of the value's life remain
    found = reader.lookup("k")
    assert found is not None and found.source == "redis"
    assert found.ttl is not None and 9 <= found.ttl <= 10
    for level in reader.levels:
        value_ttl = level.get_with_ttl("k")
        assert value_ttl is not None and value_ttl[1] is not None and value_ttl[1] <= 10
    clock.advance(11)
    assert reader.lookup("k", remote=False) is None


def test_level_ttl_caps_promotion(cache_url: str) -> None:
    cache = make_cache(cache_url)
    cache.set("k", "v", ttl=10_000)
    memory_ttl = cache.levels[0].get_with_ttl("k")
    assert memory_ttl is not None and memory_ttl[1] is not None and memory_ttl[1] <= 300


def test_concurrent_misses_compute_once_per_process(cache_url: str) -> None:
    cache = make_cache(cache_url)
    calls = 0
    gate = threading.Event()

    def compute() -> int:
        nonlocal calls
        calls += 1
        gate.wait(5)
        return 42

    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_compute("k", compute=compute)))
        for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.2)  # let every thread reach the single-flight table
    gate.set()
    for thread in threads:
        thread.join(10)
    assert calls == 1
    assert [r.value for r in results] == [42] * 20
    sources = sorted(r.source for r in results)
    assert sources.count("computed") == 1
    assert set(sources) <= {"computed", "joined", "memory"}


def test_an_exception_reaches_every_waiter_and_is_not_cached(cache_url: str) -> None:
    cache = make_cache(cache_url)
    gate = threading.Event()

    class Boom(Exception):
        pass

    def compute() -> int:
        gate.wait(5)
        raise Boom("no")

    errors: list[BaseException] = []

    def call() -> None:
        try:
            cache.get_or_compute("k", compute=compute)
        except Boom as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(5)]
    for thread in threads:
        thread.start()
    time.sleep(0.1)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert len(errors) == 5 and len({id(e) for e in errors}) == 1
    assert cache.lookup("k") is None
    assert cache.get_or_compute("k", compute=lambda: 7).value == 7


def test_none_is_cached_like_any_value(cache_url: str) -> None:
    cache = make_cache(cache_url)
    calls: list[int] = []
    for _ in range(3):
        cache.get_or_compute("none", compute=lambda: calls.append(1))
    assert len(calls) == 1


def test_uncacheable_value_is_returned_and_kept_out_of_redis(cache_url: str) -> None:
    cache = make_cache(cache_url)
    marker = object()
    found = cache.get_or_compute("obj", compute=lambda: marker)
    assert found.value is marker
    assert cache.uncacheable >= 1
    assert cache.tier is not None and cache.tier.get_entry("obj") is None


def test_invalidate_removes_from_every_tier(cache_url: str) -> None:
    cache = make_cache(cache_url)
    other = make_cache(cache_url)
    cache.set("k", 1)
    assert other.lookup("k") is not None
    cache.invalidate("k")
    assert cache.lookup("k") is None
    other.invalidate_local(["k"])  # what the invalidation message does in another process
    assert other.lookup("k") is None


def test_invalidate_tag(cache_url: str) -> None:
    cache = make_cache(cache_url)
    cache.set("a", 1, tags=("t",))
    cache.set("b", 2, tags=("t", "u"))
    cache.set("c", 3, tags=("u",))
    assert cache.invalidate_tag("t") == 2
    assert cache.lookup("a") is None and cache.lookup("b") is None
    assert cache.lookup("c") is not None


def test_get_many_and_set_many(cache_url: str, redis_client: redis.Redis) -> None:
    cache = make_cache(cache_url)
    cache.set_many({f"k{i}": i for i in range(50)}, ttl=60)
    cache.clear_local()
    found = cache.get_many([f"k{i}" for i in range(60)])
    assert found == {f"k{i}": i for i in range(50)}
    assert cache.get_many([f"k{i}" for i in range(5)]) == {f"k{i}": i for i in range(5)}


def test_memoized_function_and_version_bump(cache_url: str) -> None:
    cache = make_cache(cache_url)
    generations = Generations(cache.tier, max_age=60)
    calls: list[int] = []

    @cached(cache, ttl=60, generations=generations, namespace="mlc")
    def square(n: int) -> int:
        calls.append(n)
        return n * n

    assert square(3) == 9 and square(3) == 9 and square(n=3) == 9
    assert calls == [3]
    assert square.lookup(3).source == "memory"
    square.invalidate_all()
    assert square(3) == 9
    assert calls == [3, 3]
    square.invalidate(3)
    assert square(3) == 9 and calls == [3, 3, 3]


def test_generation_bump_reaches_another_process_within_max_age(cache_url: str) -> None:
    clock = FakeClock()
    tier = RedisTier.from_url(cache_url, serializer=SERIALIZER, namespace="mlc")
    mine = Generations(tier, max_age=1.0, timer=clock)
    theirs = Generations(tier, max_age=1.0, timer=clock)
    assert theirs.current("fn:x") == 0
    mine.bump("fn:x")
    assert theirs.current("fn:x") == 0  # trusted for max_age
    clock.advance(1.01)
    assert theirs.current("fn:x") == 1


def test_redis_down_never_fails_a_computation() -> None:
    server = RedisServer().start()
    tier = RedisTier.from_url(
        server.url, serializer=SERIALIZER, namespace="mlc", socket_timeout=0.2
    )
    cache = MultiLevelCache(
        serializer=SERIALIZER, tier=tier, levels=[MemoryLevel("memory", max_entries=10)]
    )
    server.stop()
    try:
        assert cache.get_or_compute("k", compute=lambda: "v").value == "v"
        assert cache.get_or_compute("k", compute=lambda: "other").source == "memory"
        assert tier.stats["errors"] >= 1
    finally:
        cache.close()


def test_corrupt_remote_entry_is_a_counted_miss(cache_url: str, redis_client: redis.Redis) -> None:
    cache = make_cache(cache_url)
    redis_client.set("bad", b"\x80\x03cos\nsystem\n")
    assert cache.lookup("bad") is None
    assert redis_client.get("bad") is None
    assert cache.tier is not None and cache.tier.stats["corrupt"] == 1


@pytest.mark.parametrize("kind", ["memory", "bytes"])
def test_add_level_as_in_the_seed(kind: str) -> None:
    cache = MultiLevelCache(serializer=SERIALIZER)
    level = cache.add_level("l1", ttl=5, max_size=10, kind=kind, max_bytes=2**20)
    assert level.max_entries == 10 and level.ttl == 5
    with pytest.raises(ValueError, match="already exists"):
        cache.add_level("l1", ttl=5, max_size=10)
    cache.set("k", [1, 2])
    assert cache.get("k") == [1, 2]


def test_hot_memo_keeps_types_apart_and_follows_invalidation(cache_url: str) -> None:
    cache = make_cache(cache_url)
    calls: list[Any] = []

    @cached(cache, ttl=60, generations=Generations(cache.tier, max_age=60), namespace="mlc")
    def echo(x: Any) -> str:
        calls.append(x)
        return f"{type(x).__name__}:{x!r}"

    assert [echo(1), echo(True), echo(1.0), echo("1"), echo(b"1")] == [
        "int:1",
        "bool:True",
        "float:1.0",
        "str:'1'",
        "bytes:b'1'",
    ]
    hot_before = echo.hot_hits
    # The second round is answered by the memory level (and remembered), the third by
    # the memo, each call under its own type: none answers for another.
    for _ in range(2):
        assert echo(1) == "int:1" and echo(True) == "bool:True" and echo(1.0) == "float:1.0"
    assert echo.hot_hits == hot_before + 3
    assert len(calls) == 5

    echo.invalidate(1)  # a local invalidation advances the epoch: no stale memo answer
    assert echo(1) == "int:1" and len(calls) == 6
    echo.invalidate_all()
    assert echo(1) == "int:1" and len(calls) == 7
    cache.invalidate_local(["unrelated"])  # what an invalidation message does
    hits = echo.hot_hits
    echo(1)
    assert echo.hot_hits == hits and len(calls) == 7  # re-validated through the cache


def test_hot_memo_respects_ttl_and_bound(cache_url: str) -> None:
    clock = FakeClock()
    serializer = SERIALIZER
    cache = MultiLevelCache(
        serializer=serializer, levels=[MemoryLevel("memory", max_entries=100, timer=clock)]
    )
    gens = Generations(None, max_age=1000, timer=clock)
    calls: list[int] = []

    def square(n: int) -> int:
        calls.append(n)
        return n * n

    from tiercel.core.cache.memoize import CachedFunction, Memoized

    memo = Memoized(CachedFunction(square, ttl=5), cache, gens, "mlc", timer=clock, hot_entries=8)
    assert memo(3) == 9 and memo(3) == 9 and memo(3) == 9 and calls == [3]
    assert memo.hot_hits == 1
    clock.advance(6)  # past the value's TTL: neither the memo nor the level may answer
    assert memo(3) == 9 and calls == [3, 3]
    for n in range(50):
        memo(n)
        memo(n)
    assert len(memo.memo.entries) <= 8


def test_a_value_read_while_an_invalidation_arrives_is_not_promoted(cache_url: str) -> None:
    cache = make_cache(cache_url)
    cache.set("k", "old", ttl=60)
    cache.clear_local()
    assert cache.tier is not None
    real_get_entry = cache.tier.get_entry

    def racing_get_entry(key: str) -> Any:
        entry = real_get_entry(key)  # the old value is on its way back...
        cache.invalidate_local([key])  # ...while the invalidation message is handled
        return entry

    cache.tier.get_entry = racing_get_entry  # type: ignore[method-assign]
    found = cache.lookup("k")
    assert found is not None and found.value == "old"  # this one read may answer
    cache.tier.get_entry = real_get_entry  # type: ignore[method-assign]
    assert cache.lookup("k", remote=False) is None, "the outdated value was kept locally"


def test_a_lost_generation_counter_is_restored_by_processes_that_remember_it(
    cache_url: str, redis_client: redis.Redis
) -> None:
    clock = FakeClock()
    tier = RedisTier.from_url(cache_url, serializer=SERIALIZER, namespace="mlc")
    old_process = Generations(tier, max_age=1.0, timer=clock)
    old_process.bump("fn:x")
    old_process.bump("fn:x")
    redis_client.flushall()  # the counter is evicted (allkeys-lru) or flushed
    new_process = Generations(tier, max_age=1.0, timer=clock)
    clock.advance(1.01)
    assert old_process.current("fn:x") == 2  # never backwards, and written back
    assert old_process.restored == 1
    assert new_process.current("fn:x") == 2  # so a process that never saw it agrees


@pytest.mark.parametrize(
    ("levels", "holders"), [((), []), (("bytes",), ["bytes"]), (None, ["memory", "bytes"])]
)
def test_levels_choose_where_a_function_is_kept_locally(
    cache_url: str, levels: tuple[str, ...] | None, holders: list[str]
) -> None:
    cache = make_cache(cache_url)
    calls: list[int] = []

    @cached(
        cache,
        ttl=60,
        namespace="mlc",
        levels=levels,
        generations=Generations(cache.tier, max_age=60),
    )
    def triple(n: int) -> int:
        calls.append(n)
        return 3 * n

    key = triple.spec.key("mlc", triple.generations, (5,), {})
    assert triple(5) == 15 and triple(5) == 15
    assert [level.name for level in cache.levels if key in level] == holders
    assert calls == [5]  # answered from Redis or a local level, not recomputed
    if not holders:
        assert triple.lookup(5).source == "redis"


def test_an_unknown_level_name_is_a_clear_error(cache_url: str) -> None:
    cache = make_cache(cache_url)
    with pytest.raises(ValueError, match="no local level named 'disk'"):
        cache.with_levels(("disk",))


def test_listed_failures_are_cached_for_error_ttl_and_others_never(cache_url: str) -> None:
    cache = make_cache(cache_url)
    calls: list[int] = []

    class Missing(LookupError):
        pass

    @cached(
        cache,
        ttl=60,
        namespace="mlc",
        cache_errors=(Missing,),
        error_ttl=0.3,
        generations=Generations(cache.tier, max_age=60),
    )
    def find(n: int) -> int:
        calls.append(n)
        if n < 0:
            raise Missing(f"nothing at {n}")
        if n == 0:
            raise ZeroDivisionError("not listed")
        return n

    for _ in range(3):
        with pytest.raises(Missing, match="nothing at -1"):
            find(-1)
    assert calls == [-1]  # one computation, its failure served from the cache
    time.sleep(0.35)  # past error_ttl: tried again
    with pytest.raises(Missing):
        find(-1)
    assert calls == [-1, -1]
    for _ in range(2):
        with pytest.raises(ZeroDivisionError):
            find(0)
    assert calls.count(0) == 2  # an unlisted failure is never cached
