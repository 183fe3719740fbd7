"""This process's pools, by name: ``with pools.acquire("db") as conn:`` from task code.

Pools are *defined* anywhere, at import time (a definition is only a recipe,
so a prefork child inherits it harmlessly), and *built* on first use in the
process that uses them: each prefork child builds its own, never shares the
parent's sockets, and closes them at shutdown (the registry belongs to the
process's :class:`tiercel.tasks.runtime.Runtime`). A child recycled by
``worker_max_tasks_per_child`` or ``worker_max_memory_per_child`` is a new
process: it starts with new pools and empty levels.

Built in, from the settings:

* ``"redis"``: redis-py's ``BlockingConnectionPool`` on ``TIERCEL_CACHE_URL``
  (``TIERCEL_REDIS_MAX_CONNECTIONS``, waits ``TIERCEL_POOL_TIMEOUT``);
* ``"db"``: a ``psycopg_pool`` pool when ``TIERCEL_DATABASE_URL`` is set
  (``TIERCEL_DB_POOL_MIN`` / ``TIERCEL_DB_POOL_MAX``).

Anything else with :func:`define_resource` (a :class:`tiercel.core.pools.resource_pool.ResourcePool`
over any factory)::

    pools.define_resource("http", lambda: httpx.Client(timeout=5), max_size=4)

    with pools.acquire("http") as client:
        client.get(url)

The registry also holds the process's :class:`tiercel.core.local.memory_budget.MemoryBudget`
over its local cache levels, and per-type object pools (:func:`object_pool`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from tiercel.core.errors import PoolClosed, PoolError
from tiercel.core.local.memory_budget import BudgetedLevel, MemoryBudget
from tiercel.core.pools.named_pool import NamedPool
from tiercel.core.pools.object_pool import ObjectPool, ObjectPools
from tiercel.core.pools.resource_pool import ResourcePool
from tiercel.core.settings import Settings

__all__ = [
    "PoolRegistry",
    "acquire",
    "current",
    "define",
    "define_resource",
    "get",
    "object_pool",
    "snapshot",
]

log = logging.getLogger("tiercel.pools")
T = TypeVar("T")

#: A recipe for one named pool: called with the settings, in the process that uses it.
PoolBuilder = Callable[[Settings], NamedPool]

_definitions_lock = threading.Lock()
_definitions: dict[str, PoolBuilder] = {}


def define(name: str, builder: PoolBuilder, *, replace: bool = False) -> None:
    """Define pool ``name``: ``builder(settings)`` builds it in each process on first use."""
    with _definitions_lock:
        if name in _definitions and not replace:
            raise PoolError(
                f"a pool named {name!r} is already defined; pass replace=True to redefine it"
            )
        _definitions[name] = builder


def define_resource(
    name: str, factory: Callable[[], Any], *, replace: bool = False, **options: Any
) -> None:
    """Define a generic :class:`ResourcePool` of ``factory()`` resources.

    ``options`` go to :class:`ResourcePool` (``min_size``, ``max_size``, ``check``,
    ``dispose``...); ``timeout``, ``max_idle`` and ``max_lifetime`` default to the
    ``TIERCEL_POOL_*`` settings.
    """

    def build(settings: Settings) -> NamedPool:
        merged = {
            "timeout": settings.pool_timeout,
            "max_idle": settings.pool_max_idle,
            "max_lifetime": settings.pool_max_lifetime,
            **options,
        }
        return ResourcePool(name, factory, **merged)

    define(name, build, replace=replace)


def _build_redis(settings: Settings) -> NamedPool:
    from tiercel.core.pools.redis_pool import RedisPool

    if settings.cache_url is None:
        raise PoolError("pool 'redis' needs TIERCEL_CACHE_URL")
    return RedisPool(
        "redis",
        settings.cache_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.pool_timeout,
        socket_timeout=settings.redis_timeout,
    )


def _build_db(settings: Settings) -> NamedPool:
    from tiercel.core.pools.postgres_pool import PostgresPool

    if settings.database_url is None:
        raise PoolError("pool 'db' needs TIERCEL_DATABASE_URL (a postgresql:// URL)")
    return PostgresPool(
        "db",
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        timeout=settings.pool_timeout,
        max_idle=settings.pool_max_idle,
        max_lifetime=settings.pool_max_lifetime,
    )


class PoolRegistry:
    """The pools, object pools and memory budget of one process."""

    def __init__(
        self,
        settings: Settings,
        *,
        levels: Iterable[BudgetedLevel] = (),
        on_budget_eviction: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        #: Called after the budget evicted entries from the levels.
        self.on_budget_eviction = on_budget_eviction
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._pools: dict[str, NamedPool] = {}
        self._creator_pid: dict[str, int] = {}
        self._closed = False
        self.objects = ObjectPools()
        self.budget = MemoryBudget(settings.memory_budget_bytes)
        for level in levels:
            self.budget.register(level)
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    def names(self) -> list[str]:
        """Names of the pools this process can use (built or not yet)."""
        with _definitions_lock:
            defined = set(_definitions)
        return sorted(defined | {"redis"} | ({"db"} if self.settings.database_url else set()))

    def get(self, name: str) -> NamedPool:
        """Pool ``name``, built now if this process has not used it yet."""
        pool = self._pools.get(name)
        if pool is not None and not self._closed:
            return pool
        with self._lock:
            if self._closed:
                raise PoolClosed(f"the pools of process {self.pid} are closed (shut down)")
            pool = self._pools.get(name)
            if pool is None:
                pool = self._builder(name)(self.settings)
                self._pools[name] = pool
                self._creator_pid[name] = os.getpid()
            return pool

    def acquire(
        self, name: str, timeout: float | None = None
    ) -> contextlib.AbstractContextManager[Any]:
        """``with registry.acquire("db") as conn:`` one resource of pool ``name``."""
        return self.get(name).lease(timeout)

    def built(self) -> dict[str, NamedPool]:
        """The pools built in this process so far."""
        with self._lock:
            return dict(self._pools)

    def creator_pid(self, name: str) -> int | None:
        """The pid of the process that built pool ``name`` (None if not built)."""
        return self._creator_pid.get(name)

    def sweep(self) -> int:
        """Reap idle and expired resources and evict levels over the budget."""
        reaped = 0
        for pool in self.built().values():
            try:
                reaped += pool.reap()
            except Exception:
                log.warning("reaping pool %r failed", pool.name, exc_info=True)
        self.enforce_budget()
        return reaped

    def enforce_budget(self) -> int:
        """Evict level entries until the memory budget holds; returns how many went."""
        evicted = self.budget.enforce()
        if evicted and self.on_budget_eviction is not None:
            self.on_budget_eviction()
        return evicted

    def start_sweeper(self, interval: float) -> None:
        """Run :meth:`sweep` every ``interval`` seconds in a daemon thread of this process."""
        if self._sweeper is not None:
            return
        thread = threading.Thread(
            target=self._sweep_loop,
            args=(interval,),
            name=f"tiercel-pool-sweeper-{self.pid}",
            daemon=True,
        )
        self._sweeper = thread
        thread.start()

    def snapshot(self) -> dict[str, Any]:
        """Every built pool's metrics, the object pools and the memory budget, as plain data."""
        pools = {}
        for name, pool in self.built().items():
            pools[name] = {**pool.snapshot(), "creator_pid": self._creator_pid[name]}
        return {
            "pid": self.pid,
            "pools": pools,
            "objects": self.objects.snapshot(),
            "memory": self.budget.snapshot(),
        }

    def close(self) -> None:
        """Close every pool (idempotent); later acquires raise :class:`PoolClosed`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            pools = list(self._pools.values())
        self._stop.set()
        if self._sweeper is not None and self._sweeper is not threading.current_thread():
            self._sweeper.join(timeout=5)
        for pool in pools:
            try:
                pool.close()
            except Exception:
                log.warning("closing pool %r failed", pool.name, exc_info=True)
        self.objects.close()
        self.budget.clear()

    def _builder(self, name: str) -> PoolBuilder:
        with _definitions_lock:
            builder = _definitions.get(name)
        if builder is not None:
            return builder
        if name == "redis":
            return _build_redis
        if name == "db":
            return _build_db
        raise PoolError(
            f"no pool named {name!r}: define it with tiercel.tasks.pools.define_resource() "
            f"(known: {', '.join(self.names())})"
        )

    def _sweep_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.sweep()
            except Exception:  # a sweep must never kill the thread
                log.warning("pool sweep failed", exc_info=True)


def current() -> PoolRegistry:
    """This process's registry: its runtime's (see :mod:`tiercel.tasks.runtime`)."""
    from tiercel.tasks import runtime

    return runtime.current().pools


def acquire(name: str, timeout: float | None = None) -> contextlib.AbstractContextManager[Any]:
    """``with pools.acquire("db") as conn:`` one resource of this process's pool ``name``."""
    return current().acquire(name, timeout)


def get(name: str) -> NamedPool:
    """This process's pool ``name``."""
    return current().get(name)


def object_pool(kind: type[T], *, max_idle: int | None = None) -> ObjectPool[T]:
    """This process's pool of reusable ``kind`` objects (``kind`` needs ``reset()``)."""
    return current().objects.pool(kind, max_idle=max_idle)


def snapshot() -> dict[str, Any]:
    """This process's pool metrics and memory budget."""
    return current().snapshot()
