"""The cache's side of a miss in every tier: one computation per key, fleet-wide.

:class:`MissLoop` runs the election through the narrow
:class:`~tiercel.core.cache.fleet.Fleet` interface and keeps the counters in
the cache's own :class:`~tiercel.core.cache.lookup.CacheState`. It reads and
stores through callables the cache hands it per call, so the fleet layer
never sees the cache and this loop never holds it:

1. register a waiter for the key, *then* re-read it (no lost wake-up);
2. claim the key's lease (indexing its tags first);
3. the holder computes (the lease renewed meanwhile), writes back under
   fencing and wakes everyone;
4. a waiter wakes on completion and reads the value, or on a shared failure
   raises :class:`~tiercel.core.errors.ComputationFailed`, or, when the holder
   died and its lease expired, loops and one of the waiters takes over.

An exception marked with :func:`defer` (a task asking to be run again later,
such as Celery's ``Retry``) is not a failure: the holder gives the lease and
its in-flight marker up without a value, its waiters look again and one of
them computes, and the exception still reaches the holder's caller.

Cache trouble never fails a computation: when the shared tier is unreachable
(or its breaker is open) the loop computes without a lease, keeps the value in
the process's own levels and counts it as ``degraded``.

Every computation is told to the cache's
:class:`~tiercel.core.cache.miss_book.MissBook` with its reason: the history
record the acquire script returned with the lease, a refresh, or the tier
being down; a takeover, a value another holder wrote and Redis lost, and a
computation without a lease also count as duplicates
(:mod:`tiercel.core.cache.miss_reasons`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from tiercel.core.cache import miss_reasons
from tiercel.core.cache.fleet import Fleet, Waiter, WriteOutcome
from tiercel.core.cache.lookup import SOURCE_COMPUTED, SOURCE_JOINED, CacheState, Lookup
from tiercel.core.cache.miss_book import MissBook
from tiercel.core.errors import TierUnavailable
from tiercel.core.tier import events
from tiercel.core.tier.leases import Held, Lease, Present

log = logging.getLogger("tiercel.coordinator")

#: Extra seconds a waiter allows past the holder's remaining lease time.
WAIT_SLACK = 0.05

#: The shortest gap between two "computing without a lease" log lines of one process.
DEGRADED_LOG_EVERY = 10.0

#: ``encode(value, ttl, tags, compute_seconds)``: ``(frame, entry)`` or None (not storable).
Encoder = Callable[[Any, float, Sequence[str], float], "tuple[bytes, bytes] | None"]
#: Set on an exception by :func:`defer`.
_DEFERRED = "tiercel_deferred"


def defer(exc: BaseException) -> BaseException:
    """Mark ``exc`` as a deferral, not a failure (see the module docstring); returns it."""
    setattr(exc, _DEFERRED, True)
    return exc


def is_deferred(exc: BaseException) -> bool:
    """True when ``exc`` was marked by :func:`defer`."""
    return getattr(exc, _DEFERRED, False) is True


#: ``read()``: the key's value from any tier, or None.
Reader = Callable[[], "Lookup | None"]
#: ``store(value, frame, compute_seconds)``: keep a value in this process's levels.
Storer = Callable[[Any, "bytes | None", "float | None"], None]


class DegradedNotice:
    """Counts a computation run without a lease (the shared tier is down) and says so in
    the log at most once per :data:`DEGRADED_LOG_EVERY` seconds per process."""

    def __init__(self, state: CacheState, timer: Callable[[], float]) -> None:
        self._state = state
        self._timer = timer
        self._last_log = -DEGRADED_LOG_EVERY

    def __call__(self, reason: str) -> None:
        self._state.degraded += 1
        now = self._timer()
        if now - self._last_log >= DEGRADED_LOG_EVERY:
            self._last_log = now
            log.warning(
                "tiercel: cache tier unavailable (%s); computing without a lease, "
                "serving from local levels",
                reason,
            )


class MissLoop:
    """Elects one computer per key through ``fleet``; counts into ``state``."""

    def __init__(
        self,
        fleet: Fleet,
        state: CacheState,
        encode: Encoder,
        *,
        book: MissBook | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fleet = fleet
        self._state = state
        #: Where each computation is counted with its reason.
        self.book = book if book is not None else MissBook()
        self._encode = encode
        self._timer = timer
        self._note_degraded = DegradedNotice(state, timer)

    def compute(
        self,
        key: str,
        create: Callable[[], Any],
        *,
        read: Reader,
        store: Storer,
        ttl: float,
        tags: Sequence[str],
        inflight_id: str | None,
        checked: bool,
    ) -> Lookup:
        """The value of ``key``: another process's, or ``create()`` run here under a lease.

        ``checked`` says the caller just found ``key`` missing in every tier: the
        first read is skipped (the claim still reports a value written since).
        """
        fleet = self.fleet
        unleased = miss_reasons.TIER_UNAVAILABLE
        if not fleet.available():
            return self._degraded(key, create, store, ttl, "breaker open", unleased)
        deadline = self._timer() + fleet.max_wait
        waited = False
        try:
            waiter = fleet.waiter(key)
        except TierUnavailable as exc:
            return self._degraded(key, create, store, ttl, str(exc), unleased)
        with waiter:
            while True:
                if not checked:
                    found = read()
                    if found is not None:
                        if waited:
                            self._state.fleet_joined += 1
                            return Lookup(found.value, SOURCE_JOINED, found.ttl)
                        return found
                checked = False
                got = self._claim(key, ttl, tags, inflight_id, unless_present=True)
                if isinstance(got, str):
                    return self._degraded(key, create, store, ttl, got, unleased)
                if isinstance(got, Present):
                    continue  # written since we looked: read it
                if isinstance(got, Lease):
                    self.book.leased(key, got.history, ttl, took_over=waited)
                    if waited:
                        self._state.takeovers += 1
                    return self._compute_as_holder(got, create, store, ttl, tags, inflight_id)
                self._wait_for_holder(key, got, waiter, deadline)
                waited = True

    def refresh(
        self,
        key: str,
        create: Callable[[], Any],
        *,
        store: Storer,
        ttl: float,
        tags: Sequence[str],
        inflight_id: str | None,
    ) -> Lookup | None:
        """Recompute ``key`` under its lease although a value exists; None when another
        process holds the lease (it is already computing a newer value)."""
        refresh = miss_reasons.REFRESH
        if not self.fleet.available():
            return self._degraded(key, create, store, ttl, "breaker open", refresh)
        got = self._claim(key, ttl, tags, inflight_id, unless_present=False)
        if isinstance(got, str):
            return self._degraded(key, create, store, ttl, got, refresh)
        if not isinstance(got, Lease):
            return None
        self._state.refreshed += 1
        self.book.miss(key, refresh)
        return self._compute_as_holder(got, create, store, ttl, tags, inflight_id)

    def _claim(
        self,
        key: str,
        ttl: float,
        tags: Sequence[str],
        inflight_id: str | None,
        *,
        unless_present: bool,
    ) -> Lease | Held | Present | str:
        """The fleet's answer, or a str saying why the shared tier failed."""
        try:
            return self.fleet.claim(
                key, ttl=ttl, tags=tags, inflight_id=inflight_id, unless_present=unless_present
            )
        except TierUnavailable as exc:
            self.fleet.unavailable()
            return str(exc)

    def _wait_for_holder(self, key: str, held: Held, waiter: Waiter, deadline: float) -> None:
        remaining = deadline - self._timer()
        if remaining <= 0:
            raise TimeoutError(f"waited {self.fleet.max_wait:g}s for the computation of {key}")
        outcome = waiter.wait(min(held.holder_ttl + WAIT_SLACK, remaining))
        if outcome == events.Failed.KIND:
            try:
                failure = self.fleet.failure(key)
            except TierUnavailable:
                failure = None
            if failure is not None:
                self._state.failures_shared += 1
                raise failure
        # Done, invalidated, reconnected or a timeout: look again, and take the lease
        # over if its holder is gone.

    def _compute_as_holder(
        self,
        lease: Lease,
        create: Callable[[], Any],
        store: Storer,
        ttl: float,
        tags: Sequence[str],
        inflight_id: str | None,
    ) -> Lookup:
        started = time.perf_counter()
        with self.fleet.holding(lease):
            try:
                value = create()
            except BaseException as exc:
                if is_deferred(exc):
                    self.fleet.abandon(lease, inflight_id=inflight_id)
                else:
                    self.book.failed(lease.key)
                    self.fleet.fail(lease, exc, inflight_id=inflight_id)
                raise
        elapsed = time.perf_counter() - started
        self._state.leased += 1
        encoded = self._encode(value, ttl, tags, elapsed)
        if encoded is None:
            # Too large or not encodable: nothing to share, nothing kept.
            self._state.uncacheable += 1
            try:
                self.fleet.abandon(lease, inflight_id=inflight_id)
            except TierUnavailable as exc:
                self.fleet.unavailable()
                self._note_degraded(str(exc))
                store(value, None, elapsed)  # the process's levels still serve it
            return Lookup(value, SOURCE_COMPUTED, ttl)
        frame, entry = encoded
        # A local invalidation from here until the answer is heard (the epoch moves)
        # means the value must not be kept here, whatever Redis answered.
        epoch = self._state.epoch

        def written(outcome: WriteOutcome) -> None:
            if isinstance(outcome, TierUnavailable):
                self.fleet.unavailable()
                self._note_degraded(str(outcome))
            elif not outcome:
                # Fenced out (lease lost) or invalidated while computing: the value
                # answers this request only and is kept nowhere.
                self._state.fenced += 1
                return
            if self._state.epoch == epoch:
                store(value, frame, elapsed)

        self.fleet.write_back(lease, entry, ttl, inflight_id=inflight_id, then=written)
        return Lookup(value, SOURCE_COMPUTED, ttl)

    def _degraded(
        self,
        key: str,
        create: Callable[[], Any],
        store: Storer,
        ttl: float,
        reason: str,
        miss_reason: str,
    ) -> Lookup:
        """Compute without a lease: counted as ``miss_reason`` and as a duplicate (no
        lease stopped another process computing it too)."""
        self._note_degraded(reason)
        self.book.unleased(key, miss_reason)
        started = time.perf_counter()
        try:
            value = create()
        except BaseException as exc:
            if not is_deferred(exc):
                self.book.failed(key)
            raise
        store(value, None, time.perf_counter() - started)
        return Lookup(value, SOURCE_COMPUTED, ttl)
