"""Bounded, blocking pools of reusable resources.

:class:`ResourcePool` pools anything a factory makes (HTTP clients, model
handles, parsers, sockets): at most ``max_size`` exist at once, an acquire
waits on a condition variable (never a sleep loop) for at most ``timeout``
seconds, a resource is health-checked on checkout, idle ones above
``min_size`` are reaped, and none lives past ``max_lifetime``. One resource is
never handed to two users at once; a broken one is discarded, not returned.

It has the :class:`~tiercel.core.pools.named_pool.NamedPool` shape the
per-process registry needs, and reports :meth:`ResourcePool.snapshot` through
:class:`~tiercel.core.pools.pool_metrics.PoolMetrics` like every pool.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tiercel.core.errors import ForeignResource, PoolClosed, PoolTimeout
from tiercel.core.pools.pool_metrics import PoolMetrics

__all__ = ["ResourcePool"]

T = TypeVar("T")
log = logging.getLogger("tiercel.pools")


@dataclass(slots=True)
class _Slot(Generic[T]):
    resource: T
    created_at: float
    idle_since: float


class ResourcePool(Generic[T]):
    """A bounded pool of resources made by ``factory``.

    * ``min_size`` resources are kept once made (:meth:`fill` makes them now);
      idle ones above it are closed after ``max_idle`` seconds; none is handed
      out after ``max_lifetime`` seconds (``None``: no limit).
    * :meth:`acquire` waits up to ``timeout`` seconds (the pool's default when
      ``None``; ``0`` never waits) and raises :class:`PoolTimeout` naming the pool.
    * ``check(resource) -> bool`` runs on checkout of an idle resource; a
      resource failing it (or raising) is closed and another one is tried.
    * ``dispose(resource)`` closes a resource (default: its ``close()`` if any).
    * A factory that raises propagates its error and frees the slot it reserved.

    Use :meth:`lease` as a context manager; a ``with`` block that raises one of
    ``discard_on`` (default: any exception) closes the resource instead of
    returning it, since it may be half-used. ``timer`` (seconds) drives idle and
    lifetime ages, so tests can tick a fake clock.
    """

    def __init__(
        self,
        name: str,
        factory: Callable[[], T],
        *,
        min_size: int = 0,
        max_size: int = 10,
        timeout: float = 30.0,
        check: Callable[[T], bool] | None = None,
        dispose: Callable[[T], None] | None = None,
        max_idle: float | None = 600.0,
        max_lifetime: float | None = 3600.0,
        discard_on: tuple[type[BaseException], ...] = (BaseException,),
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"pool {name!r}: max_size must be an int >= 1, got {max_size!r}")
        if (
            isinstance(min_size, bool)
            or not isinstance(min_size, int)
            or not (0 <= min_size <= max_size)
        ):
            raise ValueError(
                f"pool {name!r}: min_size must be an int in [0, max_size={max_size}], "
                f"got {min_size!r}"
            )
        if timeout < 0:
            raise ValueError(f"pool {name!r}: timeout must be >= 0 seconds, got {timeout!r}")
        for label, value in (("max_idle", max_idle), ("max_lifetime", max_lifetime)):
            if value is not None and not value > 0:
                raise ValueError(f"pool {name!r}: {label} must be > 0 or None, got {value!r}")
        self._name = name
        self._factory = factory
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self._check = check
        self._dispose = dispose or _close_if_closable
        self.max_idle = max_idle
        self.max_lifetime = max_lifetime
        self._discard_on = discard_on
        self._timer = timer
        self._cond = threading.Condition(threading.Lock())
        # Idle slots, most recently returned on the right (LIFO keeps few resources warm
        # and lets the oldest-idle on the left be reaped first).
        self._idle: deque[_Slot[T]] = deque()
        # Checked-out slots by id(resource); the slot keeps the object alive so its id
        # cannot be reused by another object while it is out.
        self._out: dict[int, _Slot[T]] = {}
        # Resources that exist or are being made (idle + out + reserved for a factory call).
        self._size = 0
        self._closed = False
        self.metrics = PoolMetrics()

    # -- public API ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The pool's name (appears in every error it raises)."""
        return self._name

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def size(self) -> int:
        """Resources that exist now (idle, in use, or being made)."""
        return self._size

    @property
    def idle(self) -> int:
        """Resources waiting in the pool."""
        return len(self._idle)

    @property
    def in_use(self) -> int:
        """Resources handed out and not yet released."""
        return len(self._out)

    def acquire(self, timeout: float | None = None) -> T:
        """Take a resource for exclusive use; :meth:`release` it when done."""
        wait = self.timeout if timeout is None else timeout
        started = time.monotonic()
        deadline = started + wait
        cond = self._cond
        while True:
            slot: _Slot[T] | None = None
            expired: _Slot[T] | None = None
            with cond:
                while True:
                    if self._closed:
                        raise PoolClosed(
                            f"pool {self._name!r} is closed: it cannot lend "
                            "resources any more (it was shut down)"
                        )
                    if self._idle:
                        slot = self._idle.pop()
                        if self._too_old(slot, self._timer()):
                            expired, slot = slot, None
                            self._size -= 1
                            self.metrics.closed += 1
                            break
                        if self._check is None:
                            return self._hand_out(slot, started)
                        break
                    if self._size < self.max_size:
                        self._size += 1  # reserve a slot; the factory runs outside the lock
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self.metrics.timeouts += 1
                        raise PoolTimeout(
                            f"pool {self._name!r} (max_size={self.max_size}, "
                            f"in use={len(self._out)}) had no free resource within "
                            f"{wait:g}s: raise its max_size, release resources sooner, "
                            "or pass a longer timeout"
                        )
                    self.metrics.waiters += 1
                    try:
                        cond.wait(remaining)
                    finally:
                        self.metrics.waiters -= 1
            if expired is not None:
                self._safe_dispose(expired.resource)
                continue
            if slot is None:
                return self._create(started)
            if self._healthy(slot.resource):
                with cond:
                    if not self._closed:
                        return self._hand_out(slot, started)
                    self._size -= 1
                    self.metrics.closed += 1
                self._safe_dispose(slot.resource)
                continue  # raises PoolClosed at the top of the loop
            self._discard_broken(slot.resource)

    def release(self, resource: T, *, broken: bool = False) -> None:
        """Give back a resource from :meth:`acquire`; ``broken=True`` closes it instead.

        Raises :class:`ForeignResource` for an object this pool did not hand out
        (or one already released).
        """
        dispose = False
        with self._cond:
            slot = self._out.get(id(resource))
            if slot is None or slot.resource is not resource:
                raise ForeignResource(
                    f"pool {self._name!r} did not hand out {_describe(resource)} "
                    "(or it was already released): release only what acquire() returned, once"
                )
            del self._out[id(resource)]
            self.metrics.in_use -= 1
            now = self._timer()
            if broken or self._closed or self._too_old(slot, now):
                dispose = True
                self._size -= 1
                self.metrics.closed += 1
                if broken:
                    self.metrics.broken += 1
            else:
                slot.idle_since = now
                self._idle.append(slot)
            self._cond.notify()
        if dispose:
            self._safe_dispose(resource)

    @contextlib.contextmanager
    def lease(self, timeout: float | None = None) -> Iterator[T]:
        """``with pool.lease() as resource:`` acquire, use, release (or discard on error)."""
        resource = self.acquire(timeout)
        broken = False
        try:
            yield resource
        except self._discard_on:
            broken = True
            raise
        finally:
            self.release(resource, broken=broken)

    def fill(self) -> int:
        """Make resources until ``min_size`` exist; returns how many were made.

        A factory error propagates (the pool stays usable, one resource short).
        """
        made = 0
        while True:
            with self._cond:
                if self._closed:
                    raise PoolClosed(f"pool {self._name!r} is closed")
                if self._size >= self.min_size:
                    return made
                self._size += 1
            resource = self._make()
            now = self._timer()
            with self._cond:
                self._idle.appendleft(_Slot(resource, now, now))
                self._cond.notify()
            made += 1

    def reap(self) -> int:
        """Close idle resources past ``max_lifetime``, and above ``min_size`` past ``max_idle``.

        Returns how many were closed. Cheap enough to call from a periodic sweep.
        """
        doomed: list[T] = []
        with self._cond:
            now = self._timer()
            keep: deque[_Slot[T]] = deque()
            # Oldest-idle first (left), so the resources above min_size that go are the
            # ones unused longest.
            for slot in self._idle:
                too_idle = (
                    self.max_idle is not None
                    and self._size > self.min_size
                    and now - slot.idle_since >= self.max_idle
                )
                if too_idle or self._too_old(slot, now):
                    doomed.append(slot.resource)
                    self._size -= 1
                    self.metrics.closed += 1
                else:
                    keep.append(slot)
            self._idle = keep
            if doomed:
                self._cond.notify(len(doomed))
        for resource in doomed:
            self._safe_dispose(resource)
        return len(doomed)

    def close(self) -> None:
        """Close idle resources now and each lent one when it is released. Idempotent."""
        with self._cond:
            self._closed = True
            idle = [slot.resource for slot in self._idle]
            self._idle.clear()
            self._size -= len(idle)
            self.metrics.closed += len(idle)
            self._cond.notify_all()  # waiters wake up and raise PoolClosed
        for resource in idle:
            self._safe_dispose(resource)

    def snapshot(self) -> dict[str, Any]:
        """Size, in use, waiters, wait-time histogram, timeouts, created and closed."""
        with self._cond:
            return self.metrics.snapshot(
                name=self._name,
                kind="generic",
                min_size=self.min_size,
                max_size=self.max_size,
                size=self._size,
                idle=len(self._idle),
                closed_pool=self._closed,
            )

    def __enter__(self) -> ResourcePool[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"ResourcePool({self._name!r}, size={self._size}, in_use={len(self._out)}, "
            f"max_size={self.max_size})"
        )

    # -- internals -------------------------------------------------------------------------

    def _hand_out(self, slot: _Slot[T], started: float) -> T:
        # Caller holds the lock.
        self._out[id(slot.resource)] = slot
        metrics = self.metrics
        metrics.in_use += 1
        metrics.acquires += 1
        metrics.waits.record(time.monotonic() - started)
        return slot.resource

    def _create(self, started: float) -> T:
        resource = self._make()  # the reserved slot is freed by _make on failure
        now = self._timer()
        with self._cond:
            if not self._closed:
                return self._hand_out(_Slot(resource, now, now), started)
            self._size -= 1
            self.metrics.closed += 1
        self._safe_dispose(resource)
        raise PoolClosed(f"pool {self._name!r} was closed while a resource was being made")

    def _make(self) -> T:
        try:
            resource = self._factory()
        except BaseException:
            with self._cond:
                self._size -= 1
                self.metrics.create_errors += 1
                self._cond.notify()  # a waiter may now make one itself
            raise
        with self._cond:
            self.metrics.created += 1
        return resource

    def _healthy(self, resource: T) -> bool:
        assert self._check is not None
        try:
            return bool(self._check(resource))
        except Exception:
            log.debug(
                "pool %r: health check raised; discarding the resource", self._name, exc_info=True
            )
            return False

    def _discard_broken(self, resource: T) -> None:
        with self._cond:
            self._size -= 1
            self.metrics.closed += 1
            self.metrics.broken += 1
            self._cond.notify()
        self._safe_dispose(resource)

    def _too_old(self, slot: _Slot[T], now: float) -> bool:
        return self.max_lifetime is not None and now - slot.created_at >= self.max_lifetime

    def _safe_dispose(self, resource: T) -> None:
        try:
            self._dispose(resource)
        except Exception:
            log.warning(
                "pool %r: closing %s failed", self._name, _describe(resource), exc_info=True
            )


def _close_if_closable(resource: Any) -> None:
    close = getattr(resource, "close", None)
    if callable(close):
        close()


def _describe(resource: object) -> str:
    return f"{type(resource).__name__} object at {id(resource):#x}"
