"""The asyncio fleet layer over Redis: leases, wake-ups and fenced write-backs, awaited.

:class:`AsyncFleetCoordinator` is the
:class:`~tiercel.core.cache.async_fleet.AsyncFleet` of one event loop: the
lease scripts through :class:`~tiercel.core.tier.async_leases.AsyncLeases`, a
renewal task per held lease (:mod:`tiercel.core.tier.async_renewer`), and the
loop's :class:`~tiercel.core.tier.async_listener.AsyncListener` to wait
without polling. Like the blocking coordinator it never sees the cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager

from tiercel.core.errors import ComputationFailed, TierUnavailable
from tiercel.core.tier import events
from tiercel.core.tier.async_leases import AsyncLeases
from tiercel.core.tier.async_listener import AsyncListener, AsyncWaiter
from tiercel.core.tier.async_renewer import renewing
from tiercel.core.tier.async_tier import AsyncRedisTier
from tiercel.core.tier.lease_calls import Held, Lease, Present

__all__ = ["AsyncFleetCoordinator"]


class AsyncFleetCoordinator:
    """One computation per key across every process sharing ``tier``, for one loop."""

    def __init__(
        self,
        tier: AsyncRedisTier,
        leases: AsyncLeases,
        listener: AsyncListener,
        *,
        max_wait: float = 3600.0,
    ) -> None:
        self.tier = tier
        self.leases = leases
        self.listener = listener
        self.max_wait = max_wait

    def available(self) -> bool:
        """False while the tier's (shared) breaker is open."""
        return self.tier.breaker.state != "open"

    def unavailable(self) -> None:
        """Count a failed tier call against the breaker."""
        self.tier.breaker.record_failure()

    def waiter(self, key: str) -> AsyncWaiter:
        """Register for ``key``'s completion message on this loop's listener."""
        return self.listener.waiter(key)

    async def claim(
        self,
        key: str,
        *,
        ttl: float,
        tags: Sequence[str],
        inflight_id: str | None,
        unless_present: bool,
    ) -> Lease | Held | Present:
        """Index the key under its tags (before the lease, so a tag invalidation during
        the computation finds it), then try its lease."""
        if tags:
            await self.tier.index_tags(key, tags, ttl)
        owner = f"{self.leases.calls.owner}:{inflight_id}" if inflight_id else ""
        return await self.leases.acquire(key, owner, unless_present=unless_present)

    async def failure(self, key: str) -> ComputationFailed | None:
        """The failure record the last holder of ``key`` published, as an exception."""
        record = await self.leases.read_failure(key)
        if record is None:
            return None
        return ComputationFailed(
            key, str(record.get("type", "Error")), str(record.get("message", ""))
        )

    def holding(self, lease: Lease) -> AbstractAsyncContextManager[Lease]:
        """Renew ``lease`` from a task of this loop while the body computes."""
        return renewing(self.leases, lease)

    async def fail(self, lease: Lease, exc: BaseException, *, inflight_id: str | None) -> None:
        """Publish the failure to the waiters (best effort: the caller raises anyway)."""
        with contextlib.suppress(TierUnavailable):
            await self.leases.publish_failure(lease, exc, inflight_id=inflight_id)

    async def write_back(
        self, lease: Lease, entry: bytes, ttl: float, *, inflight_id: str | None
    ) -> bool:
        """Store ``entry`` under fencing, release the lease, wake the waiters."""
        return await self.leases.write_back(lease, entry, ttl, inflight_id=inflight_id)

    async def abandon(self, lease: Lease, *, inflight_id: str | None) -> None:
        """Release ``lease`` with no value; waiters wake, find none and compute their own."""
        del inflight_id  # the asyncio path never holds an in-flight marker
        await self.leases.release(lease)
        await self.leases.publish(
            self.leases.calls.channel_of(lease.key), events.Done(lease.key).encode()
        )

    async def invalidate(self, keys: Iterable[str]) -> None:
        """Bump each key's epoch, delete its value, tell every process."""
        for key in keys:
            await self.leases.invalidate(key)

    async def announce_generation(self, scope: str, generation: int) -> None:
        """Tell every process that ``scope`` moved to ``generation``."""
        message = events.GenerationMoved(scope, generation).encode()
        await self.leases.publish(self.listener.channel, message)

    def stats(self) -> dict[str, int]:
        """Gauges of this loop's fleet machinery."""
        return {
            "waiting": self.listener.waiting,
            "listener_reconnects": self.listener.reconnects,
        }
