"""The asyncio tier reads generation counters in one round trip, shared by concurrent callers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from tiercel.core.errors import TierUnavailable
from tiercel.core.tier.async_tier import AsyncRedisTier
from tiercel.core.tier.breaker import CircuitBreaker
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


def test_concurrent_reads_of_the_same_scopes_share_one_round_trip() -> None:
    async def main() -> None:
        client = Client({generation_key("ns", "fn"): b"4"})
        tier = _tier(client)
        scopes = ("*", "fn")
        readers = [asyncio.ensure_future(tier.generations(scopes)) for _ in range(200)]
        other = asyncio.ensure_future(tier.generations(("fn",)))
        await asyncio.sleep(0)
        client.release.set()
        assert await asyncio.gather(*readers) == [[0, 4]] * 200
        assert await other == [4]
        assert client.round_trips == [
            [generation_key("ns", "*"), generation_key("ns", "fn")],
            [generation_key("ns", "fn")],
        ], "one MGET per set of scopes, both scopes in one"
        client.round_trips.clear()
        assert await tier.generations(scopes) == [0, 4]
        assert len(client.round_trips) == 1, "a read is shared only while it runs"

    asyncio.run(main())


def test_when_the_reader_is_cancelled_the_others_read_again() -> None:
    async def main() -> None:
        client = Client({generation_key("ns", "fn"): b"2"})
        tier = _tier(client)
        first = asyncio.ensure_future(tier.generations(("fn",)))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(tier.generations(("fn",)))
        await asyncio.sleep(0)
        first.cancel()
        await asyncio.sleep(0)
        client.release.set()
        assert await second == [2]
        assert len(client.round_trips) == 2
        assert first.cancelled()

    asyncio.run(main())


def test_trouble_reaches_every_reader_as_tier_unavailable() -> None:
    async def main() -> None:
        client = Client({}, fail=redis.ConnectionError("refused"))
        tier = _tier(client)
        readers = [asyncio.ensure_future(tier.generations(("fn",))) for _ in range(3)]
        await asyncio.sleep(0)
        client.release.set()
        results = await asyncio.gather(*readers, return_exceptions=True)
        assert all(isinstance(result, TierUnavailable) for result in results)
        assert len(client.round_trips) == 1

    asyncio.run(main())


@pytest.mark.parametrize("stored", [None, b"0"])
def test_a_scope_never_bumped_is_generation_zero(stored: bytes | None) -> None:
    async def main() -> None:
        client = Client({} if stored is None else {generation_key("ns", "fn"): stored})
        client.release.set()
        assert await _tier(client).generations(("fn",)) == [0]

    asyncio.run(main())
