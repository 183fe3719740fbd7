"""A named pool of PostgreSQL connections: ``psycopg_pool.ConnectionPool`` plus metrics.

psycopg_pool keeps ``min_size`` to ``max_size`` connections, health-checks
them on checkout, reaps idle ones and retires old ones in its own worker
threads; this module adds tiercel's error types and the snapshot shape every
registry pool shares. psycopg is an optional dependency
(``pip install 'tiercel[postgres]'``), imported only when a pool is built.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from tiercel.core.errors import PoolClosed, PoolTimeout
from tiercel.core.pools.pool_metrics import PoolMetrics

__all__ = ["PostgresPool"]


class PostgresPool:
    """Connections to ``conninfo`` (a ``postgresql://`` URL or key=value string)."""

    kind = "postgres"

    def __init__(
        self,
        name: str,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        timeout: float = 5.0,
        max_idle: float = 600.0,
        max_lifetime: float = 3600.0,
        check: bool = True,
        **kwargs: Any,
    ) -> None:
        try:
            from psycopg_pool import ConnectionPool
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "PostgreSQL pools need psycopg: pip install 'tiercel[postgres]'"
            ) from exc
        self._name = name
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self.metrics = PoolMetrics()
        self._lock = threading.Lock()
        # open=True: the pool's threads start here, in the process that uses it (after fork).
        self._pool: Any = ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            max_idle=max_idle,
            max_lifetime=max_lifetime,
            name=name,
            open=True,
            check=ConnectionPool.check_connection if check else None,
            **kwargs,
        )

    @property
    def name(self) -> str:
        """The pool's name in its registry."""
        return self._name

    @property
    def connection_pool(self) -> Any:
        """The ``psycopg_pool.ConnectionPool`` underneath."""
        return self._pool

    def wait(self, timeout: float = 30.0) -> None:
        """Block until ``min_size`` connections are open (raise if they cannot be)."""
        self._pool.wait(timeout=timeout)

    @contextlib.contextmanager
    def lease(self, timeout: float | None = None) -> Iterator[Any]:
        """A ``psycopg.Connection`` for the ``with`` block (a transaction, committed on exit)."""
        import psycopg_pool

        wait = self.timeout if timeout is None else timeout
        started = time.monotonic()
        with self._lock:
            self.metrics.waiters += 1
        try:
            context = self._pool.connection(timeout=wait)
            connection = context.__enter__()
        except psycopg_pool.PoolTimeout as exc:
            with self._lock:
                self.metrics.waiters -= 1
                self.metrics.timeouts += 1
            raise PoolTimeout(
                f"pool {self._name!r} (max_size={self.max_size}) had no free PostgreSQL "
                f"connection within {wait:g}s: raise TIERCEL_DB_POOL_MAX, hold connections "
                "for less time, or check that the server is reachable"
            ) from exc
        except psycopg_pool.PoolClosed as exc:
            with self._lock:
                self.metrics.waiters -= 1
            raise PoolClosed(f"pool {self._name!r} is closed") from exc
        except BaseException:
            with self._lock:
                self.metrics.waiters -= 1
            raise
        with self._lock:
            self.metrics.checked_out(time.monotonic() - started)
        with contextlib.ExitStack() as stack:
            stack.callback(self._returned)
            stack.push(context)  # psycopg_pool commits, rolls back or discards on exit
            yield connection

    def _returned(self) -> None:
        with self._lock:
            self.metrics.in_use -= 1

    def reap(self) -> int:
        """Nothing to do: psycopg_pool's own threads reap idle and old connections."""
        return 0

    def close(self, timeout: float = 5.0) -> None:
        """Close every connection and stop the pool's threads."""
        self._pool.close(timeout=timeout)

    def snapshot(self) -> dict[str, Any]:
        """Size, in use, waiters, wait histogram, timeouts, created and closed."""
        stats = self._pool.get_stats()
        with self._lock:
            self.metrics.created = int(stats.get("connections_num", 0))
            size = int(stats.get("pool_size", 0))
            self.metrics.closed = max(0, self.metrics.created - size)
            return self.metrics.snapshot(
                name=self._name,
                kind=self.kind,
                min_size=self.min_size,
                max_size=self.max_size,
                size=size,
                idle=int(stats.get("pool_available", 0)),
                closed_pool=bool(self._pool.closed),
                library=dict(stats),
            )
