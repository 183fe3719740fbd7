"""The counters and gauges every pool reports, whatever library backs it.

A pool's :meth:`snapshot` is a plain ``dict`` of these figures plus a
:class:`~tiercel.core.pools.wait_histogram.WaitHistogram` of acquire waits;
:class:`~tiercel.core.pools.resource_pool.ResourcePool`,
:class:`~tiercel.core.pools.redis_pool.RedisPool` and
:class:`~tiercel.core.pools.postgres_pool.PostgresPool` all keep one.
"""

from __future__ import annotations

from typing import Any

from tiercel.core.pools.wait_histogram import WaitHistogram

__all__ = ["PoolMetrics"]


class PoolMetrics:
    """Counters and gauges of one pool; the owner serialises updates with its lock."""

    __slots__ = (
        "acquires",
        "broken",
        "closed",
        "create_errors",
        "created",
        "in_use",
        "timeouts",
        "waiters",
        "waits",
    )

    def __init__(self) -> None:
        self.acquires = 0
        self.timeouts = 0
        self.created = 0
        self.closed = 0
        self.create_errors = 0
        self.broken = 0
        self.in_use = 0
        self.waiters = 0
        self.waits = WaitHistogram()

    def checked_out(self, waited: float) -> None:
        """A waiter got its resource after ``waited`` seconds (caller holds the lock)."""
        self.waiters -= 1
        self.acquires += 1
        self.in_use += 1
        self.waits.record(waited)

    def snapshot(self, **gauges: Any) -> dict[str, Any]:
        """The metrics as a ``dict``, with ``gauges`` (name, kind, size...) first."""
        return {
            **gauges,
            "in_use": self.in_use,
            "waiters": self.waiters,
            "acquires": self.acquires,
            "timeouts": self.timeouts,
            "created": self.created,
            "closed": self.closed,
            "create_errors": self.create_errors,
            "broken": self.broken,
            "wait": self.waits.snapshot(),
        }
