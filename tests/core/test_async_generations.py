"""Generation counters for asyncio key derivation: one MGET, shared by concurrent callers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from tiercel.core.cache.async_memoize import derive_key
from tiercel.core.cache.async_shared_reads import SharedReads
from tiercel.core.cache.memoize import NAMESPACE_SCOPE, CachedFunction, function_scope
from tiercel.core.tier.async_tier import AsyncRedisTier
from tiercel.core.tier.breaker import CircuitBreaker
from tiercel.core.tier.generations import Generations
from tiercel.core.tier.redis_tier import generation_key


class Client:
    """Answers MGET from a dict once released; counts the round trips."""

    def __init__(self, stored: dict[str, bytes], *, fail: Exception | None = None) -> None:
        self.stored = stored
        self.fail = fail
        self.round_trips: list[list[str]] = []
        self.release = asyncio.Event()

    def register_script(self, source: str) -> Any:
        return None

    async def mget(self, keys: list[str]) -> list[bytes | None]:
        self.round_trips.append(keys)
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return [self.stored.get(key) for key in keys]


def _tier(client: Client) -> AsyncRedisTier:
    return AsyncRedisTier(client, namespace="ns", breaker=CircuitBreaker())  # type: ignore[arg-type]


def _square(n: int) -> int:
    return n * n


SPEC = CachedFunction(_square, ttl=60)


def _derive(
    tier: AsyncRedisTier, generations: Generations, shared: SharedReads[list[int]], n: int
) -> Any:
    """The key derivation of ``SPEC(n)`` in namespace ``ns``, not awaited yet."""
    return derive_key(SPEC, generations, "ns", tier, (n,), {}, shared=shared)


SCOPES = [generation_key("ns", NAMESPACE_SCOPE), generation_key("ns", function_scope(SPEC.name))]


def test_concurrent_first_calls_share_one_round_trip_for_both_scopes() -> None:
    async def main() -> None:
        client = Client({SCOPES[1]: b"4"})
        tier = _tier(client)
        generations = Generations(None, max_age=60)
        shared: SharedReads[list[int]] = SharedReads()
        keys = [asyncio.ensure_future(_derive(tier, generations, shared, n)) for n in range(200)]
        await asyncio.sleep(0)
        client.release.set()
        derived = await asyncio.gather(*keys)
        assert client.round_trips == [SCOPES], "one MGET of both scopes for 200 callers"
        assert generations.fresh(function_scope(SPEC.name)) == 4
        assert derived == [SPEC.key("ns", generations, (n,), {}) for n in range(200)]
        await _derive(tier, generations, shared, 1)
        assert len(client.round_trips) == 1, "then remembered for max_age"

    asyncio.run(main())


def test_when_the_reader_is_cancelled_the_others_read_again() -> None:
    async def main() -> None:
        client = Client({})
        tier = _tier(client)
        generations = Generations(None, max_age=60)
        shared: SharedReads[list[int]] = SharedReads()
        first = asyncio.ensure_future(_derive(tier, generations, shared, 1))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(_derive(tier, generations, shared, 2))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0)
        client.release.set()
        assert await second == SPEC.key("ns", generations, (2,), {})
        assert len(client.round_trips) == 2 and first.cancelled()

    asyncio.run(main())


def test_an_unreachable_tier_leaves_every_caller_with_the_last_known_generation() -> None:
    async def main() -> None:
        client = Client({}, fail=redis.ConnectionError("refused"))
        tier = _tier(client)
        generations = Generations(None, max_age=60)
        shared: SharedReads[list[int]] = SharedReads()
        keys = [asyncio.ensure_future(_derive(tier, generations, shared, n)) for n in range(3)]
        await asyncio.sleep(0)
        client.release.set()
        assert len(await asyncio.gather(*keys)) == 3, "a key for each: cache trouble fails no call"
        assert len(client.round_trips) == 1
        assert generations.unavailable == 2 * 3, "both scopes unreadable, for each caller"

    asyncio.run(main())


@pytest.mark.parametrize("stored", [None, b"0"])
def test_a_scope_never_bumped_is_generation_zero(stored: bytes | None) -> None:
    async def main() -> None:
        client = Client(
            {SCOPES[0]: b"7"} if stored is None else {SCOPES[0]: b"7", SCOPES[1]: stored}
        )
        client.release.set()
        scopes = (NAMESPACE_SCOPE, function_scope(SPEC.name))
        assert await _tier(client).generations(scopes) == [7, 0]

    asyncio.run(main())
