"""An in-memory cache tier, for tests that are not about Redis.

The shape of dramatiq's ``StubBroker``: one :class:`StubStore` plays the
shared Redis of a deployment; each simulated process gets a
:class:`StubTier` (the :class:`~tiercel.core.tier.api.CacheTier` contract)
and a :class:`~tiercel.core.cache.stub_fleet.StubFleet` (the
:class:`~tiercel.core.cache.fleet.Fleet` contract) over it, so the
multi-level cache, its miss loop and the lease rules (one holder, fencing,
shared failures, takeover of an expired lease) run in microseconds without a
redis-server::

    store = StubStore()
    cache = MultiLevelCache(serializer=s, tier=StubTier(store, s), fleet=StubFleet(store))

``store.down = True`` makes every call fail as an unreachable Redis does.
Integration tests keep real Redis and real worker processes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tiercel.core.encoding.entry import Entry
from tiercel.core.errors import CodecError, ComputationFailed, TierUnavailable, ValueTooLarge
from tiercel.core.tier import events
from tiercel.core.tier import history as records
from tiercel.core.tier.api import CacheTier
from tiercel.core.tier.redis_tier import PayloadSerializer


class Wakeable(Protocol):
    """A waiter the store wakes with a message kind (``d``, ``f``, ``i``)."""

    def wake(self, kind: str) -> None: ...


class Listener(Protocol):
    """A process hearing the channel; its ``on_*`` handlers receive the messages."""


@dataclass
class HeldLease:
    """A lease as the store keeps it."""

    token: int
    expires_at: float


@dataclass
class StubStore:
    """The shared state of one simulated deployment."""

    clock: Callable[[], float] = time.time
    #: While True, every call fails as an unreachable Redis does.
    down: bool = False
    values: dict[str, tuple[bytes, float]] = field(default_factory=dict)
    tags: dict[str, set[str]] = field(default_factory=dict)
    leases: dict[str, HeldLease] = field(default_factory=dict)
    fences: dict[str, int] = field(default_factory=dict)
    epochs: dict[str, int] = field(default_factory=dict)
    failures: dict[str, tuple[ComputationFailed, float]] = field(default_factory=dict)
    generations: dict[str, int] = field(default_factory=dict)
    #: Each key's history record, as the lease scripts keep it (see ``tier/history.py``).
    history: dict[str, str] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)
    #: Threads waiting for a key's computation, by key (see ``StubFleet.waiter``).
    waiters: dict[str, list[Wakeable]] = field(default_factory=dict)
    #: Every process's channel handlers (see ``StubFleet``).
    listeners: list[Listener] = field(default_factory=list)

    def check(self) -> None:
        """Raise TierUnavailable while the store is down."""
        if self.down:
            raise TierUnavailable("the stub tier is down")

    def live_value(self, key: str) -> bytes | None:
        """The stored record of ``key`` unless it expired (call with the lock held)."""
        found = self.values.get(key)
        if found is None:
            return None
        if found[1] <= self.clock():
            del self.values[key]
            return None
        return found[0]

    def wake(self, key: str, kind: str) -> None:
        for waiter in self.waiters.get(key, ()):
            waiter.wake(kind)

    def broadcast(self, sender: Listener | None, handler: str, *args: Any) -> None:
        """Deliver a channel message to every other process's handler."""
        for listener in list(self.listeners):
            callback = getattr(listener, handler, None)
            if listener is not sender and callback is not None:
                callback(*args)

    def now_ms(self) -> int:
        """The store's clock in milliseconds, as history records are stamped."""
        return int(self.clock() * 1000)

    def drop_key(self, key: str, *, by_tag: bool = False) -> bool:
        """Bump ``key``'s epoch and delete its value (the invalidation script)."""
        kind = records.INVALIDATED_TAG if by_tag else records.INVALIDATED_KEY
        self.history[key] = records.History(kind, self.now_ms(), self.now_ms()).encode()
        self.epochs[key] = self.epochs.get(key, 0) + 1
        existed = self.values.pop(key, None) is not None
        self.wake(key, events.Invalidated.KIND)
        return existed


class StubTier(CacheTier):
    """One process's view of the stored values (the :class:`CacheTier` contract)."""

    def __init__(
        self,
        store: StubStore,
        serializer: PayloadSerializer,
        *,
        max_value_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.store = store
        self.serializer = serializer
        self.max_value_bytes = max_value_bytes
        self.counts = dict.fromkeys(("hits", "misses", "errors", "writes", "unencodable"), 0)

    def get_entry(self, key: str) -> Entry | None:
        return self.get_entries([key]).get(key)

    def get_entries(self, keys: Sequence[str]) -> dict[str, Entry]:
        if self.store.down:
            self.counts["errors"] += 1
            return {}
        found: dict[str, Entry] = {}
        with self.store.lock:
            for key in keys:
                raw = self.store.live_value(key)
                if raw is None:
                    self.counts["misses"] += 1
                    continue
                try:
                    found[key] = Entry.unpack(raw)
                except CodecError:
                    del self.store.values[key]
                    continue
                self.counts["hits"] += 1
        return found

    def encode_entry(
        self, value: Any, *, ttl: float, tags: Sequence[str] = (), compute_seconds: float = 0.0
    ) -> tuple[bytes, bytes] | None:
        try:
            payload = self.serializer.dumps(value)
            if len(payload) > self.max_value_bytes:
                raise ValueTooLarge(f"{len(payload)} bytes")
        except (CodecError, ValueTooLarge):
            self.counts["unencodable"] += 1
            return None
        record = Entry.create(
            payload, now=self.store.clock(), ttl=ttl, compute_seconds=compute_seconds, tags=tags
        ).pack()
        return payload, record

    def store_record(self, key: str, record: bytes, ttl: float, tags: Sequence[str]) -> None:
        """Put an encoded record in place (the fleet's write-back does this too)."""
        with self.store.lock:
            self.store.values[key] = (record, self.store.clock() + ttl)
            for tag in tags:
                self.store.tags.setdefault(tag, set()).add(key)
            self.counts["writes"] += 1

    def set(
        self,
        key: str,
        value: Any,
        *,
        ttl: float,
        tags: Sequence[str] = (),
        compute_seconds: float = 0.0,
    ) -> bool:
        return self.set_many({key: value}, ttl=ttl, tags=tags, compute_seconds=compute_seconds) == 1

    def set_many(
        self,
        items: Mapping[str, Any],
        *,
        ttl: float,
        tags: Sequence[str] = (),
        compute_seconds: float = 0.0,
    ) -> int:
        if not ttl > 0:
            raise ValueError(f"ttl={ttl!r}: expected a positive number of seconds")
        if self.store.down:
            self.counts["errors"] += 1
            return 0
        stored = 0
        for key, value in items.items():
            encoded = self.encode_entry(value, ttl=ttl, tags=tags, compute_seconds=compute_seconds)
            if encoded is not None:
                self.store_record(key, encoded[1], ttl, tags)
                stored += 1
        return stored

    def delete(self, *keys: str) -> int:
        self.store.check()
        with self.store.lock:
            return sum(self.store.values.pop(key, None) is not None for key in keys)

    def invalidate_tag(
        self, tag: str, *, remove: Callable[[list[bytes]], int] | None = None
    ) -> int:
        self.store.check()
        with self.store.lock:
            members = sorted(self.store.tags.pop(tag, set()))
        if not members:
            return 0
        if remove is not None:
            return remove([member.encode() for member in members])
        return self.delete(*members)

    def generation(self, scope: str) -> int:
        self.store.check()
        return self.store.generations.get(scope, 0)

    def bump_generation(self, scope: str) -> int:
        self.store.check()
        with self.store.lock:
            value = self.store.generations[scope] = self.store.generations.get(scope, 0) + 1
        return value

    def restore_generation(self, scope: str, value: int) -> int:
        self.store.check()
        with self.store.lock:
            stored = self.store.generations[scope] = max(value, self.generation(scope))
        return stored

    @property
    def stats(self) -> dict[str, int | str]:
        return {**self.counts, "breaker": "closed"}

    def close(self) -> None:
        """Nothing to release."""
