"""A call ``claimed`` by its submitter: no Redis read before the lease claim.

``submit`` publishes a task only after it found the key missing in every tier
and marked it in flight; the worker running that task goes from its local
levels straight to the fleet-wide claim, which reports a value written since.
Such a value is judged as any other: an expired cached failure is computed
again, not raised.
"""

from __future__ import annotations

import time
from typing import Any

from tiercel.core.cache.failures import record
from tiercel.core.cache.lookup import SOURCE_COMPUTED, SOURCE_REDIS
from tiercel.core.cache.memoize import CachedFunction
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.cache.stub_fleet import StubFleet
from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
from tiercel.core.local.memory_level import MemoryLevel
from tiercel.core.tier.generations import Generations
from tiercel.core.tier.stub import StubStore, StubTier

SERIALIZER = Serializer(MsgpackCodec())


class CountingTier(StubTier):
    """The stub tier, counting the entries read from it."""

    def __init__(self, store: StubStore) -> None:
        super().__init__(store, SERIALIZER)
        self.reads = 0

    def get_entry(self, key: str) -> Any:
        self.reads += 1
        return super().get_entry(key)


def _process(store: StubStore) -> tuple[MultiLevelCache, CountingTier]:
    tier = CountingTier(store)
    cache = MultiLevelCache(
        serializer=SERIALIZER,
        levels=[MemoryLevel("memory", max_entries=10)],
        tier=tier,
        fleet=StubFleet(store),
    )
    return cache, tier


def _call(spec: CachedFunction[Any, Any], cache: MultiLevelCache, *, claimed: bool) -> Any:
    return spec.call(cache, Generations(None), "t", (3,), {}, inflight_id="task-1", claimed=claimed)


def test_a_claimed_miss_computes_without_reading_redis_first() -> None:
    calls: list[int] = []
    spec = CachedFunction(lambda n: calls.append(n) or n * n, ttl=60)
    store = StubStore()
    cache, tier = _process(store)

    found = _call(spec, cache, claimed=True)

    assert (found.value, found.source) == (9, SOURCE_COMPUTED) and calls == [3]
    assert tier.reads == 0, "the claim is the first trip to Redis"
    other, other_tier = _process(store)
    again = _call(spec, other, claimed=False)
    assert (again.value, again.source, other_tier.reads) == (9, SOURCE_REDIS, 1)
    assert calls == [3], "written through to the shared tier"


def test_a_value_written_since_the_submitters_miss_answers_the_claimed_call() -> None:
    calls: list[int] = []
    spec = CachedFunction(lambda n: calls.append(n) or n * n, ttl=60)
    store = StubStore()
    writer, _ = _process(store)
    _call(spec, writer, claimed=True)  # another process computed it meanwhile
    cache, tier = _process(store)

    found = _call(spec, cache, claimed=True)

    assert found.value == 9 and found.source != SOURCE_COMPUTED and calls == [3]
    assert tier.reads == 1, "read once, after the claim reported it present"


def test_an_expired_failure_found_by_the_claim_is_computed_again_not_raised() -> None:
    spec = CachedFunction(lambda n: n * n, ttl=60, cache_errors=(KeyError,), error_ttl=30)
    store = StubStore()
    writer, _ = _process(store)
    key = spec.key("t", Generations(None), (3,), {})
    expired = record(KeyError("gone"), 30, wall_clock=lambda: time.time() - 31)
    writer.set(key, expired, ttl=60)
    cache, _ = _process(store)

    found = _call(spec, cache, claimed=True)

    assert (found.value, found.source) == (9, SOURCE_COMPUTED)


def test_a_local_hit_answers_a_claimed_call_without_any_trip() -> None:
    spec = CachedFunction(lambda n: n * n, ttl=60)
    cache, tier = _process(StubStore())
    _call(spec, cache, claimed=True)

    found = _call(spec, cache, claimed=True)

    assert (found.value, found.source, tier.reads) == (9, "memory", 0)
