"""The Redis tier for asyncio code: the reads and writes an awaiting cache needs.

:class:`AsyncRedisTier` speaks to the same keys as
:class:`~tiercel.core.tier.redis_tier.RedisTier`, through a ``redis.asyncio``
client built in the loop that uses it. It shares the blocking tier's circuit
breaker, so an outage seen by either side short-circuits both. Reads never
raise (a miss, an error, an open breaker or a corrupt envelope all answer
None, counted); tag indexing and generation counters raise
:class:`~tiercel.core.errors.TierUnavailable`, as the blocking tier's do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar, cast

import redis
import redis.asyncio as aioredis

from tiercel.core.encoding.entry import Entry
from tiercel.core.errors import CodecError, TierUnavailable
from tiercel.core.tier import scripts, tag_index
from tiercel.core.tier.async_get_pipeline import GetPipeline
from tiercel.core.tier.breaker import CircuitBreaker
from tiercel.core.tier.lease_calls import ms
from tiercel.core.tier.redis_tier import generation_key

__all__ = ["AsyncRedisTier"]

T = TypeVar("T")

# As in the blocking tier: these mean "unreachable or too slow" and feed the breaker.
_OUTAGE_ERRORS: Final = (redis.ConnectionError, redis.TimeoutError)


class AsyncRedisTier:
    """Entries, tag indexes and generation counters of ``namespace`` over ``client``."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        namespace: str,
        breaker: CircuitBreaker,
        gets: GetPipeline | None = None,
    ) -> None:
        self.client = client
        #: Where entries are read (the hit path's GETs), when not through ``client``.
        self.gets = gets
        self.namespace = namespace
        self.breaker = breaker
        self._delete_if_equal = scripts.register_async(client, "delete_if_equal")
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.corrupt = 0
        self.short_circuited = 0

    async def get_entry(self, key: str) -> Entry | None:
        """The raw :class:`Entry` of ``key`` (payload still encoded), or None. Never raises."""
        if not self.breaker.allow():
            self.short_circuited += 1
            return None
        gets = self.gets
        try:
            if gets is not None and not gets.full:
                raw = await gets.get(key)
            else:
                raw = cast(bytes | None, await self.client.get(key))
        except _OUTAGE_ERRORS:
            self.errors += 1
            self.breaker.record_failure()
            return None
        except redis.RedisError:
            self.errors += 1
            self.breaker.record_success()
            return None
        self.breaker.record_success()
        if raw is None:
            self.misses += 1
            return None
        try:
            entry = Entry.unpack(raw)
        except CodecError:
            self.corrupt += 1
            try:
                # Only if it still holds the bytes found corrupt: a newer value survives.
                await self._delete_if_equal(keys=[key], args=[raw])
            except redis.RedisError:
                self.errors += 1
            return None
        self.hits += 1
        return entry

    async def call(self, command: Callable[[], Awaitable[T]]) -> T:
        """Run one command behind the breaker; Redis trouble raises TierUnavailable."""
        if not self.breaker.allow():
            self.short_circuited += 1
            raise TierUnavailable(
                f"the Redis tier's circuit breaker is {self.breaker.state}; retry after "
                f"{self.breaker.reset_after:g}s"
            )
        try:
            result = await command()
        except _OUTAGE_ERRORS as exc:
            self.errors += 1
            self.breaker.record_failure()
            raise TierUnavailable(f"the Redis tier is unreachable: {exc}") from exc
        except redis.RedisError as exc:
            self.errors += 1
            self.breaker.record_success()
            raise TierUnavailable(f"the Redis tier refused the command: {exc}") from exc
        self.breaker.record_success()
        return result

    async def index_tags(self, key: str, tags: Sequence[str], ttl: float) -> None:
        """Add ``key`` to each tag's index before its value exists (see
        :meth:`RedisTier.index_tags`). Raises TierUnavailable."""
        if not tags:
            return
        ttl_ms = ms(ttl, "ttl")

        async def add() -> Any:
            pipe: Any = self.client.pipeline(transaction=False)
            for tag in tags:
                tag_index.queue_add(
                    pipe, tag_index.tag_index_key(self.namespace, tag), ttl_ms, [key]
                )
            return await pipe.execute()

        await self.call(add)

    async def generations(self, scopes: tuple[str, ...]) -> list[int]:
        """The stored generations of ``scopes`` (0 if never bumped), in one round trip.
        Raises TierUnavailable."""
        keys = [generation_key(self.namespace, scope) for scope in scopes]
        raw: list[Any] = await self.call(lambda: self.client.mget(keys))
        return [0 if value is None else int(value) for value in raw]

    async def bump_generation(self, scope: str) -> int:
        """Increment the generation of ``scope``; returns it. Raises TierUnavailable."""
        return int(await self.call(lambda: self.client.incr(generation_key(self.namespace, scope))))

    async def restore_generation(self, scope: str, value: int) -> int:
        """Raise the stored generation of ``scope`` to at least ``value``. Raises
        TierUnavailable."""
        key = generation_key(self.namespace, scope)
        script = scripts.source("raise_to")
        result: Any = await self.call(lambda: self.client.eval(script, 1, key, value))
        return int(result)

    @property
    def stats(self) -> dict[str, int | str]:
        """Counters of this client, and the shared breaker's state."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "errors": self.errors,
            "corrupt": self.corrupt,
            "short_circuited": self.short_circuited,
            "breaker": self.breaker.state,
        }

    async def close(self) -> None:
        """Close the client, its pool and the GET connection."""
        if self.gets is not None:
            await self.gets.close()
        await self.client.aclose()
