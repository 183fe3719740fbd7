"""What an awaiting cache asks of the fleet layer when a key is missing in every tier.

The asyncio twin of :mod:`tiercel.core.cache.fleet`: the same narrow
interface (elect one computer per key, let the others wait, store the
holder's value under fencing), with the calls that touch Redis awaited.
:class:`~tiercel.core.cache.async_coordinator.AsyncFleetCoordinator`
implements it over ``redis.asyncio``; the cache's
:class:`~tiercel.core.cache.async_miss_loop.AsyncMissLoop` uses it and never
sees how. Methods that talk to the shared tier may raise
:class:`~tiercel.core.errors.TierUnavailable`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Protocol

from tiercel.core.errors import ComputationFailed
from tiercel.core.tier.lease_calls import Held, Lease, Present


class AsyncWaiter(Protocol):
    """A registration for wake-ups of one key, made before re-reading it."""

    async def wait(self, timeout: float | None) -> str | None:
        """Wait until woken (the event kind) or ``timeout`` seconds (None)."""
        ...

    def __enter__(self) -> AsyncWaiter: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class AsyncFleet(Protocol):
    """Leases, waits and fenced write-backs shared by every process, awaited."""

    #: The longest a caller waits for another process's computation, in seconds.
    max_wait: float

    def available(self) -> bool:
        """False while the shared tier is known to be down (its breaker is open)."""
        ...

    def unavailable(self) -> None:
        """Record that a call to the shared tier just failed (feeds the breaker)."""
        ...

    def waiter(self, key: str) -> AsyncWaiter:
        """Register for the end of ``key``'s computation, wherever it runs."""
        ...

    async def claim(
        self,
        key: str,
        *,
        ttl: float,
        tags: Sequence[str],
        inflight_id: str | None,
        unless_present: bool,
    ) -> Lease | Held | Present:
        """Take ``key``'s lease, learn who holds it, or (``unless_present``) that a value
        was written since the caller looked."""
        ...

    async def failure(self, key: str) -> ComputationFailed | None:
        """The failure the last holder of ``key`` shared, if it shared one."""
        ...

    def holding(self, lease: Lease) -> AbstractAsyncContextManager[Lease]:
        """Keep ``lease`` alive while the body computes."""
        ...

    async def fail(self, lease: Lease, exc: BaseException, *, inflight_id: str | None) -> None:
        """Share that the computation under ``lease`` raised ``exc``; release the lease."""
        ...

    async def write_back(
        self, lease: Lease, entry: bytes, ttl: float, *, inflight_id: str | None
    ) -> bool:
        """Store ``entry`` if ``lease`` is still the newest and nothing invalidated the key
        meanwhile, release the lease and wake the waiters; False when fenced out."""
        ...

    async def abandon(self, lease: Lease, *, inflight_id: str | None) -> None:
        """Release ``lease`` with nothing to share; waiters wake and compute their own."""
        ...

    async def invalidate(self, keys: Iterable[str]) -> None:
        """Remove ``keys`` from the shared tier and tell every process."""
        ...

    async def announce_generation(self, scope: str, generation: int) -> None:
        """Tell every process that ``scope`` moved to ``generation``."""
        ...
