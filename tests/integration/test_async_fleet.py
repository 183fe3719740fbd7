"""The asyncio Redis wing on real Redis: the same leases as the blocking side, fencing,
wake-ups, takeover from a holder that went away, and computing when Redis is down."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
import redis

from tiercel.core.cache.async_cache import AsyncCache
from tiercel.core.cache.async_coordinator import AsyncFleetCoordinator
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
from tiercel.core.encoding.entry import Entry
from tiercel.core.local.memory_level import MemoryLevel
from tiercel.core.tier.async_connections import async_client_from_url
from tiercel.core.tier.async_get_pipeline import pipeline_for_url
from tiercel.core.tier.async_leases import AsyncLeases
from tiercel.core.tier.async_listener import AsyncListener
from tiercel.core.tier.async_tier import AsyncRedisTier
from tiercel.core.tier.breaker import CircuitBreaker
from tiercel.core.tier.lease_calls import Held, Lease
from tiercel.core.tier.leases import LeaseManager
from tiercel.core.tier.redis_tier import RedisTier

pytestmark = pytest.mark.integration

NS = "ta"
CHANNEL = f"{NS}:events"
SERIALIZER = Serializer(MsgpackCodec())


def value_key() -> str:
    return f"{NS}:v:fn:1:{{{uuid.uuid4().hex}}}"


def packed(payload: bytes) -> bytes:
    return Entry.create(payload, now=time.time(), ttl=60.0).pack()


class Stack:
    """One loop's awaiting cache over real Redis, as the per-loop runtime builds it."""

    def __init__(self, url: str, *, lease_ttl: float = 5.0, breaker: CircuitBreaker) -> None:
        self.client = async_client_from_url(url)
        # Reads of values through the pipelined GET connection, as the loop's runtime builds it.
        self.tier = AsyncRedisTier(
            self.client, namespace=NS, breaker=breaker, gets=pipeline_for_url(url)
        )
        self.leases = AsyncLeases(self.client, ttl=lease_ttl, channel=CHANNEL)
        self.listener = AsyncListener(self.client, CHANNEL)
        self.fleet = AsyncFleetCoordinator(self.tier, self.leases, self.listener, max_wait=10)
        encoder = RedisTier(redis.Redis.from_url(url), serializer=SERIALIZER, namespace=NS)
        self.local = MultiLevelCache(
            serializer=SERIALIZER, levels=[MemoryLevel("memory", max_entries=100)]
        )
        self.cache = AsyncCache(
            self.local,
            self.tier,
            self.fleet,
            lambda value, ttl, tags, seconds: encoder.encode_entry(
                value, ttl=ttl, tags=tags, compute_seconds=seconds
            ),
        )
        self._encoder = encoder

    async def __aenter__(self) -> Stack:
        assert await self.listener.start(5.0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cache.close()
        await self.listener.stop()
        await self.tier.close()
        self._encoder.close()


def test_async_and_blocking_leases_exclude_each_other(redis_client: redis.Redis) -> None:
    blocking = LeaseManager(redis_client, ttl=5.0, channel=CHANNEL)
    key = value_key()
    sync_lease = blocking.acquire(key)
    assert isinstance(sync_lease, Lease)

    async def main(cache_url: str) -> list[Any]:
        client = async_client_from_url(cache_url)
        leases = AsyncLeases(client, ttl=5.0, channel=CHANNEL)
        try:
            held = await leases.acquire(key)
            blocking.release(sync_lease)
            mine = await leases.acquire(key)
            assert isinstance(mine, Lease)
            other = blocking.acquire(key)
            stored = await leases.write_back(mine, packed(b"async"), 60)
            return [held, other, stored, mine.token > sync_lease.token]
        finally:
            await client.aclose()

    held, other, stored, newer = asyncio.run(main(_url(redis_client)))
    assert isinstance(held, Held) and isinstance(other, Held)
    assert stored is True and newer is True
    raw = redis_client.get(key)
    assert raw is not None and Entry.unpack(raw).payload == b"async"


def test_an_invalidation_while_computing_fences_the_async_write_back(
    redis_client: redis.Redis,
) -> None:
    blocking = LeaseManager(redis_client, ttl=5.0, channel=CHANNEL)
    key = value_key()

    async def main() -> bool:
        client = async_client_from_url(_url(redis_client))
        leases = AsyncLeases(client, ttl=5.0, channel=CHANNEL)
        try:
            lease = await leases.acquire(key)
            assert isinstance(lease, Lease)
            blocking.invalidate(key)  # another process invalidates meanwhile
            return await leases.write_back(lease, packed(b"stale"), 60)
        finally:
            await client.aclose()

    assert asyncio.run(main()) is False
    assert redis_client.get(key) is None


def test_a_waiter_is_woken_by_a_blocking_holders_write_back(redis_client: redis.Redis) -> None:
    blocking = LeaseManager(redis_client, ttl=5.0, channel=CHANNEL)
    key = value_key()
    lease = blocking.acquire(key)
    assert isinstance(lease, Lease)

    async def main() -> tuple[Any, int]:
        async with Stack(_url(redis_client), breaker=CircuitBreaker()) as stack:

            async def never() -> str:
                raise AssertionError("the holder's value was there to read")

            loop = asyncio.get_running_loop()
            loop.call_later(
                0.2,
                lambda: blocking.write_back(
                    lease, stack._encoder.encode_entry("theirs", ttl=60)[1], 60
                ),  # type: ignore[index]
            )
            started = time.monotonic()
            found = await stack.cache.get_or_compute(key, compute=never, ttl=60)
            return found, time.monotonic() - started

    found, _ = asyncio.run(main())
    assert (found.value, found.source) == ("theirs", "joined")


def test_a_holder_that_went_away_is_taken_over(redis_client: redis.Redis) -> None:
    # A holder that never writes back (killed): its short lease expires, one waiter computes.
    blocking = LeaseManager(redis_client, ttl=0.3, channel=CHANNEL)
    key = value_key()
    assert isinstance(blocking.acquire(key), Lease)

    async def main() -> tuple[Any, dict[str, Any]]:
        async with Stack(_url(redis_client), breaker=CircuitBreaker()) as stack:

            async def compute() -> str:
                return "mine"

            found = await stack.cache.get_or_compute(key, compute=compute, ttl=60)
            return found, stack.cache.stats()

    found, stats = asyncio.run(main())
    assert (found.value, found.source) == ("mine", "computed")
    assert stats["fleet"]["takeovers"] == 1 and stats["fleet"]["computed"] == 1
    raw = redis_client.get(key)
    assert raw is not None


def test_redis_down_never_fails_a_computation() -> None:
    async def main() -> tuple[Any, Any, dict[str, Any]]:
        # Nothing listens on this port: every call fails fast and feeds the breaker.
        stack = Stack("redis://127.0.0.1:1/0", breaker=CircuitBreaker(failures=1))

        async def compute() -> int:
            return 42

        try:
            first = await stack.cache.get_or_compute("k", compute=compute, ttl=60)
            again = await stack.cache.lookup("k")
            return first, again, stack.cache.stats()
        finally:
            await stack.cache.close()
            await stack.tier.close()
            stack._encoder.close()

    first, again, stats = asyncio.run(main())
    assert (first.value, first.source) == (42, "computed")
    assert again is not None and (again.value, again.source) == (42, "memory")
    assert stats["fleet"]["degraded"] == 1


def test_a_read_while_redis_is_down_is_a_counted_miss_and_opens_the_breaker() -> None:
    async def main() -> tuple[Any, int, str]:
        breaker = CircuitBreaker(failures=1)
        stack = Stack("redis://127.0.0.1:1/0", breaker=breaker)
        try:
            return await stack.cache.lookup("k"), stack.tier.errors, breaker.state
        finally:
            await stack.tier.close()
            stack._encoder.close()

    found, errors, state = asyncio.run(main())
    assert (found, errors, state) == (None, 1, "open"), "the GET connection's refusal counts"


def _url(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"redis://{kwargs['host']}:{kwargs['port']}/{kwargs.get('db', 0)}"


def test_the_awaiting_miss_loop_counts_why_it_computed(redis_client: redis.Redis) -> None:
    from tiercel.core.cache import miss_reasons as why

    key = value_key()

    async def main(url: str) -> MultiLevelCache:
        async with Stack(url, breaker=CircuitBreaker()) as stack:
            await stack.cache.get_or_compute(key, compute=lambda: _value(1), ttl=60)
            await stack.cache.invalidate(key)
            await stack.cache.get_or_compute(key, compute=lambda: _value(2), ttl=60)
            return stack.local

    local = asyncio.run(main(_url(redis_client)))
    assert local.misses.misses() == {
        ("fn", why.FIRST_COMPUTATION): 1,
        ("fn", why.INVALIDATED_KEY): 1,
    }


async def _value(n: int) -> int:
    return n


def test_a_redis_answer_is_promoted_on_the_next_turn_or_when_looked_up_first(
    redis_client: redis.Redis,
) -> None:
    keys = [value_key() for _ in range(3)]

    async def main() -> list[Any]:
        async with Stack(_url(redis_client), breaker=CircuitBreaker()) as stack:
            for n, key in enumerate(keys):
                redis_client.set(key, stack._encoder.encode_entry(n, ttl=60)[1])  # type: ignore[index]
            level = stack.local.levels[0]
            seen: list[Any] = []
            # Answered from Redis; the local copy comes on the loop's next turn...
            first = await stack.cache.lookup(keys[0])
            seen.append((first and first.source, keys[0] in level))
            await asyncio.sleep(0)
            seen.append(keys[0] in level)
            # ... or at once, when a local lookup of the same key comes first.
            await stack.cache.lookup_remote(keys[1])
            again = stack.cache.lookup_local(keys[1])
            seen.append(again and (again.source, again.value))
            # A local drop since the read began (an invalidation) cancels the copy.
            await stack.cache.lookup_remote(keys[2])
            stack.local.clear_local()
            await asyncio.sleep(0)
            seen.append(keys[2] in level)
            return seen

    assert asyncio.run(main()) == [("redis", False), True, ("memory", 1), False]


def test_a_loops_listener_times_delivery_probes_into_its_process_metrics(
    redis_client: redis.Redis,
) -> None:
    from tiercel.core.encoding.prefixes import channel_name
    from tiercel.core.metrics.names import INVALIDATION_DELIVERY_SECONDS
    from tiercel.core.settings import Settings
    from tiercel.core.tier import events
    from tiercel.tasks.async_runtime import AsyncRuntime
    from tiercel.tasks.runtime import Runtime

    namespace = f"probe-{uuid.uuid4().hex[:8]}"
    process = Runtime(Settings(cache_url=_url(redis_client), namespace=namespace))

    async def main() -> float | None:
        loop_runtime = await AsyncRuntime(process).start()
        try:
            assert loop_runtime.listener.connected
            sent = time.time()
            redis_client.publish(channel_name(namespace), events.ChannelProbe(sent).encode())
            deadline = time.monotonic() + 5
            while True:
                sketch = process.metrics.get_sketch(
                    INVALIDATION_DELIVERY_SECONDS, listener="asyncio"
                )
                if sketch is not None and sketch.count:
                    assert sketch.count == 1
                    return sketch.max
                assert time.monotonic() < deadline, "the probe never reached the loop"
                await asyncio.sleep(0.01)
        finally:
            await loop_runtime.close()

    try:
        delay = asyncio.run(main())
    finally:
        process.close()
    assert delay is not None and delay >= 0
    # The process's own notifier was never started: only the loop heard it.
    assert process.metrics.get_sketch(INVALIDATION_DELIVERY_SECONDS, listener="notifier") is None
