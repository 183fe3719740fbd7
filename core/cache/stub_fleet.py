"""An in-memory fleet layer over a :class:`~tiercel.core.tier.stub.StubStore`.

The lease rules of :mod:`tiercel.core.tier.leases` without Redis: one holder
per key, fencing tokens that only grow, an invalidation counter a write-back
must find unchanged, shared failures, and takeover once a holder's lease
expired. Unit tests of the cache and its miss loop run on it in
microseconds; integration tests keep real Redis.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from tiercel.core.cache.fleet import Fleet, WriteOutcome
from tiercel.core.errors import ComputationFailed, TierUnavailable
from tiercel.core.tier import events
from tiercel.core.tier.history import FAILED, WRITTEN, History
from tiercel.core.tier.leases import PRESENT, Held, Lease, Present
from tiercel.core.tier.stub import HeldLease, StubStore

#: How long a shared failure record stays readable, as in Redis.
FAILURE_TTL = 60.0


class _StubWaiter:
    def __init__(self, store: StubStore, key: str) -> None:
        self._store = store
        self.key = key
        self._event = threading.Event()
        self._kind: str | None = None
        with store.lock:
            store.waiters.setdefault(key, []).append(self)

    def wake(self, kind: str) -> None:
        if self._kind is None:
            self._kind = kind
        self._event.set()

    def wait(self, timeout: float | None) -> str | None:
        if not self._event.wait(timeout):
            return None
        with self._store.lock:
            kind, self._kind = self._kind, None
            self._event.clear()
        return kind

    def __enter__(self) -> _StubWaiter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._store.lock:
            waiters = self._store.waiters.get(self.key, [])
            if self in waiters:
                waiters.remove(self)
            if not waiters:
                self._store.waiters.pop(self.key, None)


class StubFleet(Fleet):
    """One process's lease client and listener over a :class:`StubStore`.

    The ``on_*`` handlers are the invalidation channel's, as
    :class:`~tiercel.core.tier.notifier.Notifier` takes them: messages one
    process sends reach every other process's handlers.
    """

    def __init__(
        self,
        store: StubStore,
        *,
        max_wait: float = 30.0,
        lease_ttl: float = 5.0,
        on_invalidate: Callable[[str], None] | None = None,
        on_tag: Callable[[str], Any] | None = None,
        on_done: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.max_wait = max_wait
        self.lease_ttl = lease_ttl
        self.on_invalidate = on_invalidate
        self.on_tag = on_tag
        self.on_done = on_done
        #: Failed calls reported by the miss loop.
        self.failed_calls = 0
        with store.lock:
            store.listeners.append(self)

    def available(self) -> bool:
        return not self.store.down

    def unavailable(self) -> None:
        self.failed_calls += 1

    def waiter(self, key: str) -> _StubWaiter:
        self.store.check()
        return _StubWaiter(self.store, key)

    def claim(
        self,
        key: str,
        *,
        ttl: float,
        tags: Sequence[str],
        inflight_id: str | None,
        unless_present: bool,
    ) -> Lease | Held | Present:
        store = self.store
        store.check()
        with store.lock:
            now = store.clock()
            for tag in tags:
                store.tags.setdefault(tag, set()).add(key)
            if unless_present and store.live_value(key) is not None:
                return PRESENT
            held = store.leases.get(key)
            if held is not None and held.expires_at > now:
                return Held(held.expires_at - now)
            token = store.fences.get(key, 0) + 1
            store.fences[key] = token
            store.leases[key] = HeldLease(token, now + self.lease_ttl)
            store.failures.pop(key, None)
            record = History.decode(store.history.get(key), store.now_ms())
            return Lease(
                key, token, store.epochs.get(key, 0), self.lease_ttl, time.monotonic(), record
            )

    def failure(self, key: str) -> ComputationFailed | None:
        self.store.check()
        with self.store.lock:
            found = self.store.failures.get(key)
            if found is None or found[1] <= self.store.clock():
                return None
            return found[0]

    @contextmanager
    def holding(self, lease: Lease) -> Iterator[Lease]:
        """The stub's leases do not expire while held: a holder that stops holding
        (a test never entering this) is what lets them expire."""
        store = self.store
        with store.lock:
            held = store.leases.get(lease.key)
            if held is not None and held.token == lease.token:
                held.expires_at = float("inf")
        try:
            yield lease
        finally:
            with store.lock:
                held = store.leases.get(lease.key)
                if held is not None and held.token == lease.token:
                    held.expires_at = store.clock() + lease.ttl

    def fail(self, lease: Lease, exc: BaseException, *, inflight_id: str | None) -> None:
        store = self.store
        if store.down:
            return
        with store.lock:
            failure = ComputationFailed(lease.key, type(exc).__name__, str(exc))
            store.failures[lease.key] = (failure, store.clock() + FAILURE_TTL)
            if store.fences.get(lease.key, 0) == lease.token:
                now = store.now_ms()
                store.history[lease.key] = History(FAILED, now, now).encode()
            self._release(lease)
            store.wake(lease.key, events.Failed.KIND)

    def write_back(
        self,
        lease: Lease,
        entry: bytes,
        ttl: float,
        *,
        inflight_id: str | None,
        then: Callable[[WriteOutcome], None],
    ) -> None:
        """Store under the lease rules; ``then`` hears the outcome before this returns."""
        try:
            stored = self._write(lease, entry, ttl)
        except TierUnavailable as exc:
            then(exc)
            return
        then(stored)

    def _write(self, lease: Lease, entry: bytes, ttl: float) -> bool:
        store = self.store
        store.check()
        with store.lock:
            current = store.fences.get(lease.key, 0) == lease.token
            unchanged = store.epochs.get(lease.key, 0) == lease.epoch
            if current and unchanged:
                store.values[lease.key] = (entry, store.clock() + ttl)
                now = store.now_ms()
                written = History(WRITTEN, now, now, now + round(ttl * 1000))
                store.history[lease.key] = written.encode()
            self._release(lease)
            store.wake(lease.key, events.Done.KIND)
        store.broadcast(self, "on_done", lease.key)
        return current and unchanged

    def abandon(self, lease: Lease, *, inflight_id: str | None) -> None:
        store = self.store
        store.check()
        with store.lock:
            self._release(lease)
            store.wake(lease.key, events.Done.KIND)

    def _release(self, lease: Lease) -> None:
        held = self.store.leases.get(lease.key)
        if held is not None and held.token == lease.token:
            del self.store.leases[lease.key]

    def invalidate(self, keys: Iterable[str]) -> None:
        store = self.store
        store.check()
        for key in keys:
            with store.lock:
                store.drop_key(key)
            store.broadcast(self, "on_invalidate", key)

    def invalidate_tag(self, tag: str) -> int:
        store = self.store
        store.check()
        with store.lock:
            members = sorted(store.tags.pop(tag, set()))
            removed = sum(store.drop_key(key, by_tag=True) for key in members)
        store.broadcast(self, "on_tag", tag)
        return removed

    def close(self) -> None:
        """Stop hearing the channel."""
        with self.store.lock:
            if self in self.store.listeners:
                self.store.listeners.remove(self)
