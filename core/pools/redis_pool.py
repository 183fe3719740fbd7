"""A named pool of Redis connections: redis-py's ``BlockingConnectionPool`` plus metrics.

redis-py's pool is bounded and waits on a queue with a timeout; this module
adds what the registry needs of every pool: a ``with pool.lease() as client``
that holds one connection for the block, tiercel's error types, and
:meth:`RedisPool.snapshot`. :attr:`RedisPool.client` is a shared client over
the same pool for ordinary commands (each takes a connection per command).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tiercel.core.errors import PoolClosed, PoolTimeout
from tiercel.core.pools.pool_metrics import PoolMetrics

__all__ = ["RedisPool"]

# What redis-py's BlockingConnectionPool raises when its queue stays empty.
_NO_CONNECTION = "No connection available"


class _CountingPool(redis.BlockingConnectionPool):
    """redis-py's blocking pool, counting the connections it makes."""

    created = 0

    def make_connection(self) -> Any:
        connection = super().make_connection()  # type: ignore[no-untyped-call, unused-ignore]
        self.created += 1  # called under the pool's queue hand-off: one thread at a time
        return connection


class RedisPool:
    """At most ``max_connections`` connections to ``url``; acquires wait ``timeout`` seconds."""

    kind = "redis"

    def __init__(
        self,
        name: str,
        url: str,
        *,
        max_connections: int = 32,
        timeout: float = 5.0,
        **connection_kwargs: Any,
    ) -> None:
        self._name = name
        self.max_size = max_connections
        self.timeout = timeout
        self._pool = _CountingPool.from_url(
            url, max_connections=max_connections, timeout=timeout, **connection_kwargs
        )
        self.client = redis.Redis(connection_pool=self._pool)
        self.metrics = PoolMetrics()
        self._lock = threading.Lock()
        self._closed = False

    @property
    def name(self) -> str:
        """The pool's name in its registry."""
        return self._name

    @property
    def connection_pool(self) -> redis.BlockingConnectionPool:
        """The redis-py pool underneath (for clients that take a ``connection_pool``)."""
        return self._pool

    @contextlib.contextmanager
    def lease(self, timeout: float | None = None) -> Iterator[redis.Redis]:
        """A client holding one connection of the pool for the ``with`` block.

        redis-py's pool takes one timeout for the whole pool, so ``timeout`` must be
        ``None`` or the pool's own.
        """
        if timeout is not None and timeout != self.timeout:
            raise ValueError(
                f"pool {self._name!r}: redis-py's pool waits {self.timeout:g}s "
                "for every acquire; build the pool with the timeout you need"
            )
        if self._closed:
            raise PoolClosed(f"pool {self._name!r} is closed")
        started = time.monotonic()
        with self._lock:
            self.metrics.waiters += 1
        try:
            client = redis.Redis(connection_pool=self._pool, single_connection_client=True)
        except RedisConnectionError as exc:
            with self._lock:
                self.metrics.waiters -= 1
                if _NO_CONNECTION in str(exc):
                    self.metrics.timeouts += 1
            if _NO_CONNECTION in str(exc):
                raise PoolTimeout(
                    f"pool {self._name!r} (max_size={self.max_size}) had no free Redis "
                    f"connection within {self.timeout:g}s: raise TIERCEL_REDIS_MAX_CONNECTIONS "
                    "or hold connections for less time"
                ) from exc
            raise
        except BaseException:
            with self._lock:
                self.metrics.waiters -= 1
            raise
        with self._lock:
            self.metrics.checked_out(time.monotonic() - started)
        try:
            yield client
        finally:
            client.close()  # gives the connection back to the pool
            with self._lock:
                self.metrics.in_use -= 1

    def reap(self) -> int:
        """Nothing to do: redis-py reconnects stale connections on checkout."""
        return 0

    def close(self) -> None:
        """Disconnect every connection; later leases raise :class:`PoolClosed`."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self.metrics.closed = self._pool.created
        self._pool.disconnect()

    def snapshot(self) -> dict[str, Any]:
        """Size, in use, waiters, wait histogram, timeouts, created and closed."""
        with self._lock:
            self.metrics.created = self._pool.created
            return self.metrics.snapshot(
                name=self._name,
                kind=self.kind,
                min_size=0,
                max_size=self.max_size,
                size=self._pool.created - self.metrics.closed,
                idle=self._pool.created - self.metrics.closed - self.metrics.in_use,
                closed_pool=self._closed,
            )
