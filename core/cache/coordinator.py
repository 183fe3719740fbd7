"""One computation per key across the fleet, and invalidation that reaches every process.

:class:`FleetCoordinator` plugs into :class:`~tiercel.core.cache.multilevel.MultiLevelCache`:
a miss in every tier computes under a lease (see :mod:`tiercel.core.tier.leases`), and
everyone else waits for the holder's notification (see :mod:`tiercel.core.tier.notifier`)
instead of computing or polling:

1. register a waiter for the key, *then* re-read it (no lost wake-up);
2. index the key under its tags, then try to take the lease;
3. the holder computes (the lease renewed meanwhile), writes back under
   fencing (the value is stored only if no newer lease and no invalidation
   happened), and publishes completion;
4. a waiter wakes on completion and reads the value, or on failure raises
   :class:`~tiercel.core.errors.ComputationFailed`, or, when the holder died and its
   lease expired, loops and one of the waiters takes the lease over.

Cache trouble never fails a computation: when Redis is unreachable (or its
breaker is open) the coordinator computes without a lease and keeps the value
in the process's own levels, and counts it as ``degraded``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tiercel.core.cache.multilevel import SOURCE_COMPUTED, SOURCE_JOINED, Lookup, MultiLevelCache
from tiercel.core.errors import ComputationFailed, TierUnavailable
from tiercel.core.tier import events
from tiercel.core.tier.leases import Held, Lease, LeaseManager, Present
from tiercel.core.tier.notifier import Notifier
from tiercel.core.tier.redis_tier import RedisTier
from tiercel.core.tier.renewer import LeaseRenewer

log = logging.getLogger("tiercel.coordinator")

#: Extra seconds a waiter allows past the holder's remaining lease time.
WAIT_SLACK = 0.05


class FleetCoordinator:
    """Leases, notifications and fenced write-back around one process's cache."""

    def __init__(
        self,
        tier: RedisTier,
        leases: LeaseManager,
        renewer: LeaseRenewer,
        notifier: Notifier,
        *,
        max_wait: float = 3600.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tier = tier
        self.leases = leases
        self.renewer = renewer
        self.notifier = notifier
        self.max_wait = max_wait
        self._timer = timer
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self.computed = 0
        self.joined = 0
        self.takeovers = 0
        self.fenced = 0
        self.degraded = 0
        self.failures_shared = 0
        self.refreshed = 0
        self._last_degraded_log = 0.0

    # --- computing ---

    def compute(
        self,
        cache: MultiLevelCache,
        key: str,
        compute: Callable[[], Any],
        *,
        ttl: float,
        tags: Sequence[str] = (),
        inflight_id: str | None = None,
        checked: bool = False,
    ) -> Lookup:
        """The value of ``key``: another process's, or ``compute()`` run here under a lease.

        ``checked`` says the caller just found ``key`` missing in every tier: the
        first read is skipped (the acquire still reports a value written since).
        """
        if self.tier.breaker.state == "open":
            return self._degraded(cache, key, compute, ttl, tags, "breaker open")
        deadline = self._timer() + self.max_wait
        waited = False
        try:
            waiter = self.notifier.waiter(key)
        except TierUnavailable as exc:
            return self._degraded(cache, key, compute, ttl, tags, str(exc))
        with waiter:
            while True:
                if not checked:
                    found = cache.lookup(key)
                    if found is not None:
                        if waited:
                            self.joined += 1
                            return Lookup(found.value, SOURCE_JOINED, found.ttl)
                        return found
                checked = False
                got = self._acquire(key, ttl, tags, inflight_id, unless_present=True)
                if isinstance(got, str):
                    return self._degraded(cache, key, compute, ttl, tags, got)
                if isinstance(got, Present):
                    continue  # written since we looked: read it
                if isinstance(got, Lease):
                    if waited:
                        self.takeovers += 1
                    return self._compute_as_holder(cache, got, compute, ttl, tags, inflight_id)
                self._wait_for_holder(key, got, waiter, deadline)
                waited = True

    def refresh(
        self,
        cache: MultiLevelCache,
        key: str,
        compute: Callable[[], Any],
        *,
        ttl: float,
        tags: Sequence[str] = (),
        inflight_id: str | None = None,
    ) -> Lookup | None:
        """Recompute ``key`` under its lease although a value exists; None when another
        process holds the lease (it is already computing a newer value)."""
        if self.tier.breaker.state == "open":
            return self._degraded(cache, key, compute, ttl, tags, "breaker open")
        got = self._acquire(key, ttl, tags, inflight_id, unless_present=False)
        if isinstance(got, str):
            return self._degraded(cache, key, compute, ttl, tags, got)
        if not isinstance(got, Lease):
            return None
        self.refreshed += 1
        return self._compute_as_holder(cache, got, compute, ttl, tags, inflight_id)

    def _acquire(
        self,
        key: str,
        ttl: float,
        tags: Sequence[str],
        inflight_id: str | None,
        *,
        unless_present: bool,
    ) -> Lease | Held | Present | str:
        """Index the key under its tags, then try its lease; a str says why Redis failed."""
        try:
            if tags:
                self.tier.index_tags(key, tags, ttl)
            return self.leases.acquire(
                key, self._owner_of(inflight_id), unless_present=unless_present
            )
        except TierUnavailable as exc:
            self.tier.breaker.record_failure()
            return str(exc)

    def _owner_of(self, inflight_id: str | None) -> str:
        return f"{self._owner}:{inflight_id}" if inflight_id else self._owner

    def _wait_for_holder(self, key: str, held: Held, waiter: Any, deadline: float) -> None:
        remaining = deadline - self._timer()
        if remaining <= 0:
            raise TimeoutError(f"waited {self.max_wait:g}s for the computation of {key}")
        outcome = waiter.wait(min(held.holder_ttl + WAIT_SLACK, remaining))
        if outcome == "f":
            try:
                record = self.leases.read_failure(key)
            except TierUnavailable:
                record = None
            if record is not None:
                self.failures_shared += 1
                raise ComputationFailed(
                    key, str(record.get("type", "Error")), str(record.get("message", ""))
                )
        # "d" (done), "i" (invalidated), "r" (reconnected) or a timeout: look again,
        # and take the lease over if its holder is gone.

    def _compute_as_holder(
        self,
        cache: MultiLevelCache,
        lease: Lease,
        compute: Callable[[], Any],
        ttl: float,
        tags: Sequence[str],
        inflight_id: str | None,
    ) -> Lookup:
        key = lease.key
        started = time.perf_counter()
        with self.renewer.holding(lease):
            try:
                value = compute()
            except BaseException as exc:
                with contextlib.suppress(TierUnavailable):
                    self.leases.publish_failure(lease, exc, inflight_id=inflight_id)
                raise
        elapsed = time.perf_counter() - started
        self.computed += 1
        cache.computed += 1
        encoded = self.tier.encode_entry(value, ttl=ttl, tags=tags, compute_seconds=elapsed)
        try:
            if encoded is None:
                # Too large or not encodable: nothing to share. Waiters wake, find no
                # value, and compute their own.
                cache.uncacheable += 1
                self.leases.release(lease)
                if inflight_id:
                    self.leases.clear_inflight(key, inflight_id)
                self.notifier.publish(events.Done(key).encode())
                stored = False
            else:
                stored = self.leases.write_back(lease, encoded[1], ttl, inflight_id=inflight_id)
                if not stored:
                    # Fenced out (lease lost) or invalidated while computing: the value
                    # answers this request only and is kept nowhere.
                    self.fenced += 1
        except TierUnavailable as exc:
            self.tier.breaker.record_failure()
            self._note_degraded(str(exc))
            stored = True  # keep it locally: the process's levels still serve it
        if stored:
            cache.store_local(key, value, encoded[0] if encoded else None, ttl, tags)
        return Lookup(value, SOURCE_COMPUTED, ttl)

    def _degraded(
        self,
        cache: MultiLevelCache,
        key: str,
        compute: Callable[[], Any],
        ttl: float,
        tags: Sequence[str],
        reason: str,
    ) -> Lookup:
        self._note_degraded(reason)
        value = compute()
        cache.computed += 1
        cache.store_local(key, value, None, ttl, tags)
        return Lookup(value, SOURCE_COMPUTED, ttl)

    def _note_degraded(self, reason: str) -> None:
        self.degraded += 1
        now = self._timer()
        if now - self._last_degraded_log > 10.0:  # at most one line per 10 s per process
            self._last_degraded_log = now
            log.warning(
                "tiercel: cache tier unavailable (%s); computing without a lease, "
                "serving from local levels",
                reason,
            )

    # --- invalidation ---

    def invalidate(self, keys: Iterable[str]) -> None:
        """Bump each key's epoch, delete its value and in-flight marker, tell every process."""
        for key in keys:
            self.leases.invalidate(key)

    def invalidate_tag(self, tag: str) -> int:
        """Invalidate every key indexed under ``tag`` (in-flight ones too), then tell everyone."""
        removed = self.tier.invalidate_tag(
            tag, remove=lambda members: self.leases.invalidate_keys(members)
        )
        self.notifier.publish(events.TagInvalidated(tag).encode())
        return removed

    def announce_generation(self, scope: str, generation: int) -> None:
        """Tell every process that ``scope`` moved to ``generation``."""
        self.notifier.publish(events.GenerationMoved(scope, generation).encode())

    def stats(self) -> dict[str, int]:
        """Counters for metrics."""
        return {
            "computed": self.computed,
            "joined": self.joined,
            "takeovers": self.takeovers,
            "fenced": self.fenced,
            "degraded": self.degraded,
            "failures_shared": self.failures_shared,
            "refreshed": self.refreshed,
            "renewing": len(self.renewer),
            "waiting": self.notifier.waiting,
            "notifier_reconnects": self.notifier.reconnects,
        }

    def close(self) -> None:
        """Stop the renewer and the notifier's listener."""
        self.renewer.stop()
        self.notifier.stop()
