"""The fleet layer over Redis: leases, wake-ups and fenced write-backs.

:class:`FleetCoordinator` is the :class:`~tiercel.core.cache.fleet.Fleet` the
cache's miss loop (:mod:`tiercel.core.cache.miss_loop`) asks when a key is
missing everywhere. It composes the lease scripts
(:mod:`tiercel.core.tier.leases`), the renewer that keeps a lease alive while
its holder computes, and the process's notifier
(:mod:`tiercel.core.tier.notifier`) that wakes waiters without polling. It
never sees the cache: what to read, compute and keep locally stays the
cache's business.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Final

from tiercel.core.errors import ComputationFailed, TierUnavailable
from tiercel.core.tier import events
from tiercel.core.tier.leases import Held, Lease, LeaseManager, Present
from tiercel.core.tier.notifier import Notifier, Waiter
from tiercel.core.tier.redis_tier import RedisTier
from tiercel.core.tier.renewer import LeaseRenewer

#: Most write-backs whose own ``d|key`` this process is still to hear (oldest forgotten).
MAX_ECHOES: Final = 4096
#: Seconds a write-back's own ``d|key`` is expected within; later, it counts as another's.
ECHO_WINDOW: Final = 5.0


class FleetCoordinator:
    """One computation per key across every process sharing ``tier``.

    A write-back publishes ``d|key``, which tells every process that its local
    copy of ``key`` is outdated, and is heard by the writer's own listener too,
    often after the writer stored the new value locally. :meth:`own_echo` tells
    the listener which ``d|key`` is that echo, so the writer keeps its value.
    """

    def __init__(
        self,
        tier: RedisTier,
        leases: LeaseManager,
        renewer: LeaseRenewer,
        notifier: Notifier,
        *,
        max_wait: float = 3600.0,
    ) -> None:
        self.tier = tier
        self.leases = leases
        self.renewer = renewer
        self.notifier = notifier
        self.max_wait = max_wait
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        # key -> monotonic time of this process's write-backs not yet heard back.
        self._echoes: OrderedDict[str, float] = OrderedDict()
        self._echo_lock = threading.Lock()

    # --- electing one computer ---

    def available(self) -> bool:
        """False while the tier's breaker is open."""
        return self.tier.breaker.state != "open"

    def unavailable(self) -> None:
        """Count a failed tier call against the breaker."""
        self.tier.breaker.record_failure()

    def waiter(self, key: str) -> Waiter:
        """Register for ``key``'s completion message on this process's listener."""
        return self.notifier.waiter(key)

    def claim(
        self,
        key: str,
        *,
        ttl: float,
        tags: Sequence[str],
        inflight_id: str | None,
        unless_present: bool,
    ) -> Lease | Held | Present:
        """Index the key under its tags, then try its lease."""
        if tags:
            self.tier.index_tags(key, tags, ttl)
        owner = f"{self._owner}:{inflight_id}" if inflight_id else self._owner
        return self.leases.acquire(key, owner, unless_present=unless_present)

    def failure(self, key: str) -> ComputationFailed | None:
        """The failure record the last holder of ``key`` published, as an exception."""
        record = self.leases.read_failure(key)
        if record is None:
            return None
        return ComputationFailed(
            key, str(record.get("type", "Error")), str(record.get("message", ""))
        )

    def holding(self, lease: Lease) -> AbstractContextManager[Lease]:
        """Renew ``lease`` in the background while the body computes."""
        return self.renewer.holding(lease)

    def fail(self, lease: Lease, exc: BaseException, *, inflight_id: str | None) -> None:
        """Publish the failure to the waiters (best effort: the caller raises anyway)."""
        with contextlib.suppress(TierUnavailable):
            self.leases.publish_failure(lease, exc, inflight_id=inflight_id)

    def write_back(
        self, lease: Lease, entry: bytes, ttl: float, *, inflight_id: str | None
    ) -> bool:
        """Store ``entry`` under fencing, release the lease, wake the waiters."""
        key = lease.key
        # Noted before the publish: the listener may hear it before this call returns.
        with self._echo_lock:
            self._echoes[key] = time.monotonic()
            self._echoes.move_to_end(key)
            while len(self._echoes) > MAX_ECHOES:
                self._echoes.popitem(last=False)
        stored = False
        try:
            stored = self.leases.write_back(lease, entry, ttl, inflight_id=inflight_id)
        finally:
            if not stored:  # nothing of ours to keep: any d|key is another's news
                with self._echo_lock:
                    self._echoes.pop(key, None)
        return stored

    def own_echo(self, key: str) -> bool:
        """True (once) if a ``d|key`` just heard is this process's own write-back of
        ``key``: the value this process stored is the newest, keep it.

        The channel delivers messages in publish order, so a later write-back by
        another process is heard after this one, and drops the copy as it should.
        """
        with self._echo_lock:
            written = self._echoes.pop(key, None)
        return written is not None and time.monotonic() - written < ECHO_WINDOW

    def abandon(self, lease: Lease, *, inflight_id: str | None) -> None:
        """Release ``lease`` with no value; waiters wake, find none and compute their own."""
        self.leases.release(lease)
        if inflight_id:
            self.leases.clear_inflight(lease.key, inflight_id)
        self.notifier.publish(events.Done(lease.key).encode())

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

    # --- introspection and lifecycle ---

    def stats(self) -> dict[str, int]:
        """Gauges of the fleet machinery (the cache counts the computations)."""
        return {
            "renewing": len(self.renewer),
            "waiting": self.notifier.waiting,
            "notifier_reconnects": self.notifier.reconnects,
            # The staleness bound's machinery: probes sent, connections given up as
            # silent, and answers that found the channel lapsed (local levels dropped).
            "notifier_probes": self.notifier.probes,
            "notifier_silences": self.notifier.silences,
            "notifier_lapses": (
                self.notifier.liveness.lapses if self.notifier.liveness is not None else 0
            ),
        }

    def close(self) -> None:
        """Stop the renewer and the notifier's listener."""
        self.renewer.stop()
        self.notifier.stop()
