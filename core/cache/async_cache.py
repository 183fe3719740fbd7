"""The multi-level cache for asyncio code: local levels read in place, Redis awaited.

:class:`AsyncCache` fronts a :class:`~tiercel.core.cache.multilevel.MultiLevelCache`
(its levels, serializer and promotion rules) with an awaiting Redis tier
(:class:`~tiercel.core.tier.async_tier.AsyncRedisTier`) and fleet
(:class:`~tiercel.core.cache.async_fleet.AsyncFleet`). A local hit is a dict
lookup and stays one: :meth:`lookup_local` is a plain method, and
:meth:`lookup` awaits nothing before it has looked locally. A miss everywhere
computes once per loop (:class:`~tiercel.core.cache.async_singleflight.AsyncSingleFlight`)
and once per fleet (:class:`~tiercel.core.cache.async_miss_loop.AsyncMissLoop`,
the same fenced lease the blocking cache takes), and writes through every tier.

The local levels are the process's: values computed here are served to its
threads as well, and the process's notifier evicts them on invalidation.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from tiercel.core.cache.async_fleet import AsyncFleet
from tiercel.core.cache.async_miss_loop import AsyncMissLoop
from tiercel.core.cache.async_singleflight import AsyncSingleFlight
from tiercel.core.cache.lookup import SOURCE_JOINED, CacheState, Lookup
from tiercel.core.cache.miss_loop import Encoder
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.encoding.entry import Entry
from tiercel.core.tier.async_tier import AsyncRedisTier

__all__ = ["AsyncCache", "AsyncCompute"]

log = logging.getLogger("tiercel.cache")

#: What computes a missing value: a function returning an awaitable.
AsyncCompute = Callable[[], Awaitable[Any]]


class AsyncCache:
    """``cache``'s levels in front of ``tier``, sharing misses with ``fleet``.

    ``encode(value, ttl, tags, compute_seconds)`` makes a value's local frame
    and Redis entry (the blocking tier's ``encode_entry`` does: no I/O).
    """

    def __init__(
        self,
        cache: MultiLevelCache,
        tier: AsyncRedisTier,
        fleet: AsyncFleet,
        encode: Encoder,
    ) -> None:
        self.cache = cache
        self.tier = tier
        self.fleet = fleet
        self._state = CacheState()
        self._flight = AsyncSingleFlight()
        self._misses = AsyncMissLoop(fleet, self._state, encode, book=cache.misses)
        self._views: dict[tuple[str, ...], AsyncCache] = {}
        self._background: set[asyncio.Task[Any]] = set()
        #: Redis answers not yet copied into the local levels (see :meth:`lookup_remote`):
        #: key -> (the levels it goes to, its entry, its value, drops when it was read).
        #: Shared with the views; emptied on the loop's next turn.
        self._promotions: dict[str, tuple[MultiLevelCache, Entry, Any, int]] = {}

    @property
    def default_ttl(self) -> float:
        """The TTL of values stored without one."""
        return self.cache.default_ttl

    def with_levels(self, names: Iterable[str] | None) -> AsyncCache:
        """A view reading and writing only the named local levels (see
        :meth:`MultiLevelCache.with_levels`); it shares counters and single-flight."""
        if names is None:
            return self
        wanted = tuple(names)
        view = self._views.get(wanted)
        if view is None:
            view = copy.copy(self)
            view.cache = self.cache.with_levels(wanted)
            view._views = {}
            self._views[wanted] = view
        return view

    # --- reads ---

    def lookup_local(self, key: str) -> Lookup | None:
        """The value of ``key`` from this process's levels, promoted; no I/O, no await."""
        if self._promotions:
            self._promote(key)
        return self.cache.lookup(key, remote=False)

    async def lookup(self, key: str) -> Lookup | None:
        """The value of ``key`` from the fastest tier holding it; None on a miss."""
        found = self.lookup_local(key)
        if found is not None:
            return found
        return await self.lookup_remote(key)

    async def lookup_remote(self, key: str) -> Lookup | None:
        """The value of ``key`` from the Redis tier (promoted locally); None on a miss.

        The answer is returned before its copy into the local levels is made: the
        copy is made on the loop's next turn, while the loop would wait for I/O
        anyway (a caller awaiting its next read overlaps it), or at once by a local
        lookup of the same key that comes first. As with an immediate copy, a local
        drop (an invalidation, a write) since the read began cancels it.
        """
        cache = self.cache
        drops = cache.drops
        entry = await self.tier.get_entry(key)
        if entry is None:
            return None
        found = cache.accept_entry(key, entry, promote=False)
        if found is not None and cache.levels and drops == cache.drops:
            if not self._promotions:
                asyncio.get_running_loop().call_soon(self._promote_all)
            self._promotions[key] = (cache, entry, found.value, drops)
        return found

    def _promote(self, key: str) -> None:
        promotion = self._promotions.pop(key, None)
        if promotion is not None:
            levels, entry, value, drops = promotion
            if drops == levels.drops:
                levels.promote_entry(key, value, entry)

    def _promote_all(self) -> None:
        for key in list(self._promotions):
            self._promote(key)

    async def get(self, key: str, *, default: Any = None) -> Any:
        """The cached value, or ``default`` (keyword-only, as in the blocking cache)."""
        found = await self.lookup(key)
        return default if found is None else found.value

    # --- computing ---

    async def get_or_compute(
        self,
        key: str,
        *,
        compute: AsyncCompute,
        ttl: float | None = None,
        tags: Sequence[str] = (),
        known_missing: bool = False,
    ) -> Lookup:
        """The cached value of ``key``, or ``await compute()`` stored through every tier.

        Concurrent awaits of one key in this loop compute once (the others get
        ``source == "joined"``), and other processes join the same computation
        through the key's lease. An exception from ``compute`` is not cached and
        reaches every caller awaiting it.
        """
        if not known_missing:
            found = await self.lookup(key)
            if found is not None:
                return found
        ttl = self.default_ttl if ttl is None else ttl
        create = self._counted(compute)

        async def compute_and_store() -> Lookup:
            return await self._misses.compute(
                key,
                create,
                read=lambda: self.lookup(key),
                store=self._storer(key, ttl, tags),
                ttl=ttl,
                tags=tags,
                checked=known_missing,
            )

        result, joined = await self._flight.do(key, compute_and_store)
        lookup: Lookup = result
        if joined:
            return Lookup(lookup.value, SOURCE_JOINED, lookup.ttl)
        return lookup

    async def refresh(
        self,
        key: str,
        *,
        compute: AsyncCompute,
        ttl: float | None = None,
        tags: Sequence[str] = (),
    ) -> Lookup | None:
        """Recompute ``key`` now although a value exists; None when another process
        already is (it holds the key's lease)."""
        ttl = self.default_ttl if ttl is None else ttl
        return await self._misses.refresh(
            key, self._counted(compute), store=self._storer(key, ttl, tags), ttl=ttl, tags=tags
        )

    def refresh_soon(
        self,
        key: str,
        *,
        compute: AsyncCompute,
        ttl: float | None = None,
        tags: Sequence[str] = (),
    ) -> None:
        """:meth:`refresh` in a task of this loop (an early or stale refresh the caller
        does not wait for); one at a time per key in this loop."""
        name = f"tiercel-refresh:{key}"
        if any(task.get_name() == name for task in self._background):
            return
        task = asyncio.get_running_loop().create_task(
            self._refresh_quietly(key, compute, ttl, tags), name=name
        )
        self._background.add(task)  # a reference, so the task is not collected mid-flight
        task.add_done_callback(self._background.discard)

    async def _refresh_quietly(
        self, key: str, compute: AsyncCompute, ttl: float | None, tags: Sequence[str]
    ) -> None:
        try:
            await self.refresh(key, compute=compute, ttl=ttl, tags=tags)
        except Exception:  # counted in compute_errors; the current value stays
            log.debug("background refresh of %s failed", key, exc_info=True)

    def _counted(self, compute: AsyncCompute) -> AsyncCompute:
        async def create() -> Any:
            try:
                value = await compute()
            except BaseException:
                self._state.compute_errors += 1
                raise
            self._state.computed += 1
            return value

        return create

    def _storer(
        self, key: str, ttl: float, tags: Sequence[str]
    ) -> Callable[[Any, bytes | None, float | None], None]:
        return lambda value, frame, cost: self.cache.store_local(key, value, frame, ttl, tags, cost)

    # --- invalidation ---

    async def invalidate(self, *keys: str) -> None:
        """Remove ``keys`` from every tier and every process's levels."""
        await self.fleet.invalidate(keys)
        self.cache.invalidate_local(keys)

    async def invalidate_all(self, scope: str) -> int:
        """Bump ``scope``'s generation (every key under it changes) and tell every process;
        returns the new generation. Raises TierUnavailable."""
        generation = await self.tier.bump_generation(scope)
        await self.fleet.announce_generation(scope, generation)
        return generation

    async def invalidate_tag(self, tag: str) -> int:
        """Remove every entry tagged ``tag`` everywhere; returns Redis keys removed.

        Rare and batched (a rename-aside drain of the tag's index): it runs the
        blocking cache's one implementation in a worker thread, off the loop.
        """
        return await asyncio.to_thread(self.cache.invalidate_tag, tag)

    # --- introspection ---

    def stats(self) -> dict[str, Any]:
        """The local levels' counters, this client's Redis counters, and what this
        loop computed, joined and shared with the fleet."""
        return {
            "levels": {level.name: level.stats for level in self.cache.levels},
            "redis": self.tier.stats,
            "computed": self._state.computed,
            "compute_errors": self._state.compute_errors,
            "joined": self._flight.joined,
            "fleet": self._state.fleet_counts(),
        }

    async def close(self) -> None:
        """Wait for background refreshes; the tier and fleet are their owner's to close."""
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
