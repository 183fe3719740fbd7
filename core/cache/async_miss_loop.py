"""The awaiting cache's side of a miss in every tier: one computation per key, fleet-wide.

:class:`AsyncMissLoop` runs the election of
:class:`~tiercel.core.cache.miss_loop.MissLoop` step for step, awaiting the
fleet (:class:`~tiercel.core.cache.async_fleet.AsyncFleet`) and the coroutine
that computes: register a waiter, *then* re-read (no lost wake-up); claim the
lease; the holder computes while a task renews the lease, writes back under
fencing and wakes everyone; a waiter wakes on completion and reads, or raises
the shared failure, or takes the lease over from a holder that went away.
Counters go to the same :class:`~tiercel.core.cache.lookup.CacheState` shape,
and the encoder and the local store are the cache's, handed in as callables.

Cache trouble never fails a computation: with the shared tier unreachable the
loop computes without a lease and keeps the value in the process's levels.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tiercel.core.cache import miss_reasons
from tiercel.core.cache.async_fleet import AsyncFleet, AsyncWaiter
from tiercel.core.cache.lookup import SOURCE_COMPUTED, SOURCE_JOINED, CacheState, Lookup
from tiercel.core.cache.miss_book import MissBook
from tiercel.core.cache.miss_loop import WAIT_SLACK, DegradedNotice, Encoder, Storer
from tiercel.core.errors import TierUnavailable
from tiercel.core.tier.lease_calls import Held, Lease, Present

__all__ = ["AsyncMissLoop", "AsyncReader", "Creator"]


#: ``read()``: awaits the key's value from any tier, or None.
AsyncReader = Callable[[], Awaitable["Lookup | None"]]
#: ``create()``: awaits a newly computed value.
Creator = Callable[[], Awaitable[Any]]


class AsyncMissLoop:
    """Elects one computer per key through ``fleet``; counts into ``state``."""

    def __init__(
        self,
        fleet: AsyncFleet,
        state: CacheState,
        encode: Encoder,
        *,
        book: MissBook | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fleet = fleet
        self._state = state
        #: Where each computation is counted with its reason (as the blocking loop does).
        self.book = book if book is not None else MissBook()
        self._encode = encode
        self._timer = timer
        self._note_degraded = DegradedNotice(state, timer)

    async def compute(
        self,
        key: str,
        create: Creator,
        *,
        read: AsyncReader,
        store: Storer,
        ttl: float,
        tags: Sequence[str],
        checked: bool,
    ) -> Lookup:
        """The value of ``key``: another process's, or ``await create()`` here under a lease.

        ``checked`` says the caller just found ``key`` missing in every tier.
        """
        fleet = self.fleet
        unleased = miss_reasons.TIER_UNAVAILABLE
        if not fleet.available():
            return await self._degraded(key, create, store, ttl, "breaker open", unleased)
        deadline = self._timer() + fleet.max_wait
        waited = False
        with fleet.waiter(key) as waiter:
            while True:
                if not checked:
                    found = await read()
                    if found is not None:
                        if waited:
                            self._state.fleet_joined += 1
                            return Lookup(found.value, SOURCE_JOINED, found.ttl)
                        return found
                checked = False
                got = await self._claim(key, ttl, tags, unless_present=True)
                if isinstance(got, str):
                    return await self._degraded(key, create, store, ttl, got, unleased)
                if isinstance(got, Present):
                    continue  # written since we looked: read it
                if isinstance(got, Lease):
                    self.book.leased(key, got.history, ttl, took_over=waited)
                    if waited:
                        self._state.takeovers += 1
                    return await self._compute_as_holder(got, create, store, ttl, tags)
                await self._wait_for_holder(key, got, waiter, deadline)
                waited = True

    async def refresh(
        self, key: str, create: Creator, *, store: Storer, ttl: float, tags: Sequence[str]
    ) -> Lookup | None:
        """Recompute ``key`` under its lease although a value exists; None when another
        process holds the lease (it is already computing a newer value)."""
        refresh = miss_reasons.REFRESH
        if not self.fleet.available():
            return await self._degraded(key, create, store, ttl, "breaker open", refresh)
        got = await self._claim(key, ttl, tags, unless_present=False)
        if isinstance(got, str):
            return await self._degraded(key, create, store, ttl, got, refresh)
        if not isinstance(got, Lease):
            return None
        self._state.refreshed += 1
        self.book.miss(key, refresh)
        return await self._compute_as_holder(got, create, store, ttl, tags)

    async def _claim(
        self, key: str, ttl: float, tags: Sequence[str], *, unless_present: bool
    ) -> Lease | Held | Present | str:
        try:
            return await self.fleet.claim(
                key, ttl=ttl, tags=tags, inflight_id=None, unless_present=unless_present
            )
        except TierUnavailable as exc:
            self.fleet.unavailable()
            return str(exc)

    async def _wait_for_holder(
        self, key: str, held: Held, waiter: AsyncWaiter, deadline: float
    ) -> None:
        remaining = deadline - self._timer()
        if remaining <= 0:
            raise TimeoutError(f"waited {self.fleet.max_wait:g}s for the computation of {key}")
        outcome = await waiter.wait(min(held.holder_ttl + WAIT_SLACK, remaining))
        if outcome == "f":
            try:
                failure = await self.fleet.failure(key)
            except TierUnavailable:
                failure = None
            if failure is not None:
                self._state.failures_shared += 1
                raise failure

    async def _compute_as_holder(
        self, lease: Lease, create: Creator, store: Storer, ttl: float, tags: Sequence[str]
    ) -> Lookup:
        started = time.perf_counter()
        async with self.fleet.holding(lease):
            try:
                value = await create()
            except BaseException as exc:
                self.book.failed(lease.key)
                await self.fleet.fail(lease, exc, inflight_id=None)
                raise
        elapsed = time.perf_counter() - started
        self._state.leased += 1
        encoded = self._encode(value, ttl, tags, elapsed)
        try:
            if encoded is None:
                self._state.uncacheable += 1
                await self.fleet.abandon(lease, inflight_id=None)
                stored = False
            else:
                stored = await self.fleet.write_back(lease, encoded[1], ttl, inflight_id=None)
                if not stored:
                    self._state.fenced += 1
        except TierUnavailable as exc:
            self.fleet.unavailable()
            self._note_degraded(str(exc))
            stored = True
        if stored:
            store(value, encoded[0] if encoded else None, elapsed)
        return Lookup(value, SOURCE_COMPUTED, ttl)

    async def _degraded(
        self,
        key: str,
        create: Creator,
        store: Storer,
        ttl: float,
        reason: str,
        miss_reason: str,
    ) -> Lookup:
        self._note_degraded(reason)
        self.book.unleased(key, miss_reason)
        started = time.perf_counter()
        try:
            value = await create()
        except BaseException:
            self.book.failed(key)
            raise
        store(value, None, time.perf_counter() - started)
        return Lookup(value, SOURCE_COMPUTED, ttl)
