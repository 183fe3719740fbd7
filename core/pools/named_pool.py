"""The shape every pool has: a name, leases, a snapshot, reaping and closing.

:class:`~tiercel.core.pools.resource_pool.ResourcePool` pools what a factory
makes; Redis and PostgreSQL are pooled by their own libraries (redis-py's
``BlockingConnectionPool``, ``psycopg_pool``), which
:mod:`~tiercel.core.pools.redis_pool` and :mod:`~tiercel.core.pools.postgres_pool`
wrap behind this same shape, so the registry (:mod:`tiercel.tasks.pools`) and
the metrics treat every pool alike.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

__all__ = ["NamedPool"]


class NamedPool(Protocol):
    """What the per-process registry needs of any pool, whatever library backs it."""

    @property
    def name(self) -> str:
        """The pool's name in its registry."""
        ...

    def lease(self, timeout: float | None = None) -> contextlib.AbstractContextManager[Any]:
        """A context manager lending one resource for the ``with`` block."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """Counters and gauges as plain data (see :class:`PoolMetrics`)."""
        ...

    def reap(self) -> int:
        """Close idle or expired resources; return how many were closed."""
        ...

    def close(self) -> None:
        """Close every resource; later acquires raise :class:`PoolClosed`."""
        ...
