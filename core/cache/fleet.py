"""What the cache asks of the fleet layer when a key is missing in every tier.

The cache owns its miss loop (:mod:`tiercel.core.cache.miss_loop`) and its
counters; the fleet layer (:class:`~tiercel.core.cache.coordinator.FleetCoordinator`
over Redis, :class:`~tiercel.core.cache.stub_fleet.StubFleet` in memory) only
elects one computer per key, lets the others wait for it, and stores the
holder's value under fencing. It never sees the cache, as dogpile.cache's
``Lock`` elects one creator through callables and never sees the region.

Every method that talks to the shared tier may raise
:class:`~tiercel.core.errors.TierUnavailable`; the miss loop then computes
without a lease ("degraded").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Protocol, TypeAlias

from tiercel.core.errors import ComputationFailed, TierUnavailable
from tiercel.core.tier.leases import Held, Lease, Present

#: How a write-back ended: True stored, False fenced out (the lease was lost or the key
#: invalidated meanwhile), or the TierUnavailable that stopped it.
WriteOutcome: TypeAlias = "bool | TierUnavailable"


class Waiter(Protocol):
    """A registration for wake-ups of one key, made before re-reading it (no lost wake-up)."""

    def wait(self, timeout: float | None) -> str | None:
        """Block until woken (the event kind) or ``timeout`` seconds (None)."""
        ...

    def __enter__(self) -> Waiter: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Fleet(Protocol):
    """Leases, waits and fenced write-backs shared by every process of a deployment."""

    #: The longest a caller waits for another process's computation, in seconds.
    max_wait: float

    def available(self) -> bool:
        """False while the shared tier is known to be down (its breaker is open)."""
        ...

    def unavailable(self) -> None:
        """Record that a call to the shared tier just failed (feeds the breaker)."""
        ...

    def waiter(self, key: str) -> Waiter:
        """Register for the end of ``key``'s computation, wherever it runs."""
        ...

    def claim(
        self,
        key: str,
        *,
        ttl: float,
        tags: Sequence[str],
        inflight_id: str | None,
        unless_present: bool,
    ) -> Lease | Held | Present:
        """Take ``key``'s lease, or learn who holds it, or (``unless_present``) that a
        value was written since the caller looked."""
        ...

    def failure(self, key: str) -> ComputationFailed | None:
        """The failure the last holder of ``key`` shared, if it shared one."""
        ...

    def holding(self, lease: Lease) -> AbstractContextManager[Lease]:
        """Keep ``lease`` alive while the body computes."""
        ...

    def fail(self, lease: Lease, exc: BaseException, *, inflight_id: str | None) -> None:
        """Share that the computation under ``lease`` raised ``exc``; release the lease."""
        ...

    def write_back(
        self,
        lease: Lease,
        entry: bytes,
        ttl: float,
        *,
        inflight_id: str | None,
        then: Callable[[WriteOutcome], None],
    ) -> None:
        """Store ``entry`` if ``lease`` is still the newest and nothing invalidated the key
        meanwhile, release the lease and wake the waiters; ``then`` hears how it ended,
        once: before this returns, or later when the fleet layer defers reading the
        answer (the Redis one does inside a worker's reply window, see
        :meth:`~tiercel.core.cache.coordinator.FleetCoordinator.open_window`). The
        store itself is not deferred: other processes see the value at once."""
        ...

    def abandon(self, lease: Lease, *, inflight_id: str | None) -> None:
        """Release ``lease`` with nothing to share (the value cannot be stored); waiters
        wake, find no value and compute their own."""
        ...

    def invalidate(self, keys: Iterable[str]) -> None:
        """Remove ``keys`` from the shared tier and tell every process."""
        ...

    def invalidate_tag(self, tag: str) -> int:
        """Remove every key tagged ``tag`` from the shared tier and tell every process."""
        ...
