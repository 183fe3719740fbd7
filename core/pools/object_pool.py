"""Reuse of expensive objects of one type, each reset before it is reused.

An :class:`ObjectPool` keeps up to ``max_idle`` released objects and hands them
out again instead of building new ones (large buffers, parsers, compiled
state). It never blocks: when none is idle it builds one, and when
``max_idle`` are already kept a released object is dropped. Objects follow the
:class:`Resettable` protocol (a ``reset()`` method) or the pool is given a
``reset=`` callable; reset runs on release, so an idle object holds no data of
its last user. An object whose reset raises is discarded, never reused.

:class:`ObjectPools` keeps one pool per type (the seed guide's ``MemoryPool``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar, cast

from tiercel.core.errors import ForeignResource, PoolClosed

__all__ = ["ObjectPool", "ObjectPools", "Resettable"]

T = TypeVar("T")


class Resettable(Protocol):
    """An object that can be returned to its just-built state."""

    def reset(self) -> None:
        """Forget every trace of the last use."""


class ObjectPool(Generic[T]):
    """Bounded reuse of objects from ``factory`` with counts of created, reused, discarded."""

    def __init__(
        self,
        factory: Callable[[], T],
        *,
        max_idle: int = 16,
        reset: Callable[[T], None] | None = None,
        name: str | None = None,
    ) -> None:
        if isinstance(max_idle, bool) or not isinstance(max_idle, int) or max_idle < 0:
            raise ValueError(f"max_idle must be an int >= 0, got {max_idle!r}")
        self.name: str = name or str(getattr(factory, "__qualname__", repr(factory)))
        if reset is None and not callable(getattr(factory, "reset", None)):
            # A class without reset() would leak one user's state to the next.
            raise TypeError(
                f"object pool {self.name!r}: objects need a reset() method, or pass reset="
            )
        self._factory = factory
        self._reset = reset or _call_reset
        self.max_idle = max_idle
        self._lock = threading.Lock()
        self._idle: list[T] = []
        self._out: dict[int, T] = {}
        self._closed = False
        self.created = 0
        self.reused = 0
        self.discarded = 0

    def acquire(self) -> T:
        """An idle object if one is kept, else a new one from the factory."""
        with self._lock:
            if self._closed:
                raise PoolClosed(f"object pool {self.name!r} is closed")
            if self._idle:
                obj = self._idle.pop()
                self._out[id(obj)] = obj
                self.reused += 1
                return obj
        obj = self._factory()  # an error propagates; nothing was reserved
        with self._lock:
            self.created += 1
            if self._closed:
                raise PoolClosed(f"object pool {self.name!r} was closed during acquire")
            self._out[id(obj)] = obj
        return obj

    def release(self, obj: T) -> None:
        """Reset ``obj`` and keep it for reuse (or drop it if the pool is full or closed).

        Raises :class:`ForeignResource` for an object this pool did not
        hand out, or one released twice.
        """
        with self._lock:
            if self._out.get(id(obj)) is not obj:
                raise ForeignResource(
                    f"object pool {self.name!r} did not hand out this "
                    f"{type(obj).__name__} (or it was already released)"
                )
            del self._out[id(obj)]
        try:
            self._reset(obj)
        except Exception:
            with self._lock:
                self.discarded += 1
            raise
        with self._lock:
            if self._closed or len(self._idle) >= self.max_idle:
                self.discarded += 1
            else:
                self._idle.append(obj)

    @contextlib.contextmanager
    def borrowed(self) -> Iterator[T]:
        """``with pool.borrowed() as obj:`` acquire, use, release."""
        obj = self.acquire()
        try:
            yield obj
        finally:
            self.release(obj)

    def close(self) -> None:
        """Drop idle objects; later acquires raise :class:`PoolClosed`."""
        with self._lock:
            self._closed = True
            self.discarded += len(self._idle)
            self._idle.clear()

    def snapshot(self) -> dict[str, Any]:
        """Counts and occupancy as plain data."""
        with self._lock:
            return {
                "name": self.name,
                "kind": "object",
                "max_idle": self.max_idle,
                "idle": len(self._idle),
                "in_use": len(self._out),
                "created": self.created,
                "reused": self.reused,
                "discarded": self.discarded,
            }


class ObjectPools:
    """One :class:`ObjectPool` per type, made on first use (the seed's ``MemoryPool``)."""

    def __init__(self, *, max_idle: int = 16) -> None:
        self.max_idle = max_idle
        self._lock = threading.Lock()
        self._pools: dict[type[Any], ObjectPool[Any]] = {}
        self._closed = False

    def pool(self, kind: type[T], *, max_idle: int | None = None) -> ObjectPool[T]:
        """The pool of ``kind`` objects (``kind()`` builds one; it must have ``reset()``)."""
        with self._lock:
            if self._closed:
                raise PoolClosed("object pools are closed")
            found = self._pools.get(kind)
            if found is None:
                found = ObjectPool(
                    kind,
                    max_idle=self.max_idle if max_idle is None else max_idle,
                    name=kind.__qualname__,
                )
                self._pools[kind] = found
            return cast(ObjectPool[T], found)

    def acquire(self, kind: type[T]) -> T:
        """An object of ``kind``, reused when one is idle."""
        return self.pool(kind).acquire()

    def release(self, obj: Any) -> None:
        """Give back an object from :meth:`acquire`."""
        with self._lock:
            found = self._pools.get(type(obj))
        if found is None:
            raise ForeignResource(f"no object pool handed out this {type(obj).__name__}")
        found.release(obj)

    def close(self) -> None:
        """Close every per-type pool."""
        with self._lock:
            self._closed = True
            pools = list(self._pools.values())
        for pool in pools:
            pool.close()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Each per-type pool's snapshot, by type name."""
        with self._lock:
            pools = list(self._pools.values())
        return {pool.name: pool.snapshot() for pool in pools}


def _call_reset(obj: Any) -> None:
    obj.reset()
