"""The fleet layer over Redis: leases, wake-ups and fenced write-backs.

:class:`FleetCoordinator` is the :class:`~tiercel.core.cache.fleet.Fleet` the
cache's miss loop (:mod:`tiercel.core.cache.miss_loop`) asks when a key is
missing everywhere. It composes the lease scripts
(:mod:`tiercel.core.tier.leases`), the renewer that keeps a lease alive while
its holder computes, and the process's notifier
(:mod:`tiercel.core.tier.notifier`) that wakes waiters without polling. It
never sees the cache: what to read, compute and keep locally stays the
cache's business.

A worker runs each task between two round trips of Celery's own (the
STARTED and SUCCESS stores of its result backend). Inside a *reply window*
(:meth:`FleetCoordinator.open_window` before the task, :meth:`close_window`
after its result is stored), two of the computation's round trips ride along
instead of waiting on their own: :meth:`FleetCoordinator.claim_ahead` sends
the lease claim before Celery's STARTED store and the miss loop's claim finds
the answer waiting; a write-back's answer is read when the window closes,
after Celery's SUCCESS store (Redis has stored the value by then; only the
holder's own bookkeeping waits). Each thread owes at most one answer at a
time: any later fleet call reads the one owed first.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Final

from tiercel.core.cache.fleet import WriteOutcome
from tiercel.core.errors import ComputationFailed, TierUnavailable
from tiercel.core.tier import events
from tiercel.core.tier.leases import Held, Lease, LeaseManager, Present
from tiercel.core.tier.notifier import Notifier, Waiter
from tiercel.core.tier.redis_tier import RedisTier
from tiercel.core.tier.renewer import LeaseRenewer
from tiercel.core.tier.sent_script import SentCall
from tiercel.core.tier.tag_index import tag_index_key

#: Most write-backs whose own ``d|key`` this process is still to hear (oldest forgotten).
MAX_ECHOES: Final = 4096
#: Seconds a write-back's own ``d|key`` is expected within; later, it counts as another's.
ECHO_WINDOW: Final = 5.0


@dataclass(frozen=True)
class _ClaimAhead:
    """A claim sent before its caller asked for it (see :meth:`FleetCoordinator.claim_ahead`)."""

    key: str
    inflight_id: str | None
    call: SentCall[Lease | Held | Present]
    #: How the claim indexed the key under its tags (asked again the same way).
    indexed: dict[str, Any]


class _ThreadReplies(threading.local):
    """One thread's reply window: whether it is open, the answer owed, the claim ahead."""

    window = False
    #: Reads the owed write-back's answer and tells its caller (None: nothing owed).
    owed: Callable[[], None] | None = None
    ahead: _ClaimAhead | None = None


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
        self._replies = _ThreadReplies()
        #: Claims sent ahead (:meth:`claim_ahead`), and those given up unused.
        self.claims_ahead = 0
        self.claims_ahead_unused = 0

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
        """Try the key's lease, its tags indexed as it is taken (see :meth:`_indexed`); a
        claim of the same key sent ahead on this thread answers instead (see
        :meth:`claim_ahead`)."""
        replies = self._replies
        self._settle_owed(replies)
        ahead = replies.ahead
        if ahead is not None:
            replies.ahead = None
            if unless_present and ahead.key == key and ahead.inflight_id == inflight_id:
                got = ahead.call.result()
                if not isinstance(got, Held):
                    return got
                # Held: ask again. The caller registered its waiter after this claim
                # went out, so the holder's wake-up may already have come and gone.
                return self.leases.acquire(
                    key, self._owner_of(inflight_id), unless_present=True, **ahead.indexed
                )
            self._drop(ahead)
        indexed = self._indexed(key, tags, ttl)
        return self.leases.acquire(
            key, self._owner_of(inflight_id), unless_present=unless_present, **indexed
        )

    def _owner_of(self, inflight_id: str | None) -> str:
        return f"{self._owner}:{inflight_id}" if inflight_id else self._owner

    def _indexed(self, key: str, tags: Sequence[str], ttl: float) -> dict[str, Any]:
        """What an acquire of ``key`` is told about its tag indexes. A computation's key
        is in its tags' indexes before it computes, so a tag invalidation meanwhile finds
        it and fences the write-back out: on one server the acquire script adds it as it
        takes the lease (no round trip of its own); a cluster keeps each index in its
        tag's slot, so the key is indexed first, apart."""
        if not tags:
            return {}
        if not self.leases.indexes_tags:
            self.tier.index_tags(key, tags, ttl)
            return {}
        namespace = self.tier.namespace
        return {"indexes": [tag_index_key(namespace, tag) for tag in tags], "index_ttl": ttl}

    # --- the reply window (see the module docstring) ---

    def open_window(self) -> None:
        """Until :meth:`close_window` on this thread, a write-back's answer is read when
        the window closes (or at this thread's next fleet call), not at once."""
        self._replies.window = True

    def close_window(self) -> None:
        """Read the answer this thread owes and tell its caller; give up a claim sent
        ahead that nobody used (its lease is released, its waiters look again)."""
        replies = self._replies
        replies.window = False
        self._settle_owed(replies)
        ahead, replies.ahead = replies.ahead, None
        if ahead is not None:
            self._drop(ahead)

    def claim_ahead(
        self, key: str, *, ttl: float, tags: Sequence[str], inflight_id: str | None
    ) -> None:
        """Send ``key``'s claim now (``unless_present``), so that this thread's next
        :meth:`claim` of it, with the same ``inflight_id``, finds the answer waiting;
        its tags are indexed as :meth:`claim` indexes them. A claim ahead left unused
        is given up by the next claim or by :meth:`close_window`. Raises
        TierUnavailable."""
        replies = self._replies
        self._settle_owed(replies)
        earlier, replies.ahead = replies.ahead, None
        if earlier is not None:
            self._drop(earlier)
        indexed = self._indexed(key, tags, ttl)
        call = self.leases.send_acquire(
            key, self._owner_of(inflight_id), unless_present=True, **indexed
        )
        replies.ahead = _ClaimAhead(key, inflight_id, call, indexed)
        self.claims_ahead += 1

    def _drop(self, ahead: _ClaimAhead) -> None:
        """Give up an unused claim: a lease it took is released, and its waiters wake."""
        self.claims_ahead_unused += 1
        with contextlib.suppress(TierUnavailable):  # else the lease expires by its ttl
            got = ahead.call.result()
            if isinstance(got, Lease):
                self.abandon(got, inflight_id=None)

    def _settle_owed(self, replies: _ThreadReplies) -> None:
        owed, replies.owed = replies.owed, None
        if owed is not None:
            owed()

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
        self,
        lease: Lease,
        entry: bytes,
        ttl: float,
        *,
        inflight_id: str | None,
        then: Callable[[WriteOutcome], None],
    ) -> None:
        """Store ``entry`` under fencing, release the lease, wake the waiters; ``then``
        hears the outcome now, or when this thread's reply window closes."""
        replies = self._replies
        self._settle_owed(replies)
        key = lease.key
        # Noted before the publish: the listener may hear it before the answer is read.
        with self._echo_lock:
            self._echoes[key] = time.monotonic()
            self._echoes.move_to_end(key)
            while len(self._echoes) > MAX_ECHOES:
                self._echoes.popitem(last=False)

        def answered(outcome: WriteOutcome) -> None:
            if outcome is not True:  # nothing of ours to keep: any d|key is another's news
                with self._echo_lock:
                    self._echoes.pop(key, None)
            then(outcome)

        try:
            call = self.leases.send_write_back(lease, entry, ttl, inflight_id=inflight_id)
        except TierUnavailable as exc:
            answered(exc)
            return

        def settle() -> None:
            try:
                stored = call.result()
            except TierUnavailable as exc:
                answered(exc)
                return
            answered(stored)

        if replies.window:
            replies.owed = settle
        else:
            settle()

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
            # Lease claims sent ahead of a worker's task body, and those it never used.
            "claims_ahead": self.claims_ahead,
            "claims_ahead_unused": self.claims_ahead_unused,
        }

    def close(self) -> None:
        """Stop the renewer and the notifier's listener."""
        self.renewer.stop()
        self.notifier.stop()
