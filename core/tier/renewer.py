"""Lease renewal: one daemon thread per process extends every lease it holds.

A holder registers its lease for the duration of a computation
(:meth:`LeaseRenewer.holding`); every ``renew_interval`` all held leases are
renewed in one pipelined round trip (:meth:`LeaseManager.renew_many`). A
lease found lost is reported by :meth:`LeaseRenewer.lost`, so a holder can
stop early; the write-back's fencing makes a lost lease harmless anyway.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tiercel.core.errors import LeaseError, TierUnavailable
from tiercel.core.tier.leases import Lease, LeaseManager

__all__ = ["LeaseRenewer"]

log = logging.getLogger(__name__)


@dataclass
class _Tracked:
    last_renewed: float
    lost: bool = False


class LeaseRenewer:
    """One daemon thread per process that renews every held lease every ``renew_interval``.

    All held leases are renewed in one pipelined round trip per tick. A lease
    whose renewal answers "not yours" is marked lost at once; while Redis is
    unreachable a lease is marked lost once it has gone a full ttl without a
    successful renewal. :meth:`lost` lets a holder stop early; write-back's
    fencing makes a lost lease harmless anyway. At most ``max_leases`` are
    tracked (:meth:`hold` raises :class:`~tiercel.core.errors.LeaseError` beyond).

    Create it in the process that uses it, after fork: the thread does not
    survive a fork, and a renewer used in another process raises LeaseError.
    """

    def __init__(
        self,
        manager: LeaseManager,
        *,
        renew_interval: float | None = None,
        max_leases: int = 10_000,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manager = manager
        self.renew_interval = manager.renew_interval if renew_interval is None else renew_interval
        if not self.renew_interval > 0:
            raise ValueError(f"renew_interval={renew_interval!r}: expected a positive number")
        self.max_leases = max_leases
        self._timer = timer
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._leases: dict[Lease, _Tracked] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.renewals = 0
        self.failures = 0

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise LeaseError(
                "this LeaseRenewer was created in another process: create one "
                "per process after fork (worker_process_init)"
            )

    def hold(self, lease: Lease) -> None:
        """Keep renewing ``lease`` until :meth:`drop`; starts the thread on first use."""
        self._check_process()
        with self._lock:
            if self._stop.is_set():
                raise LeaseError("the LeaseRenewer is stopped; create a new one")
            if lease not in self._leases and len(self._leases) >= self.max_leases:
                raise LeaseError(
                    f"already renewing {self.max_leases} leases: drop finished "
                    "leases or raise max_leases"
                )
            self._leases[lease] = _Tracked(self._timer())
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tiercel-lease-renewer", daemon=True
                )
                self._thread.start()

    def drop(self, lease: Lease) -> None:
        """Stop renewing ``lease`` (it then expires unless released)."""
        with self._lock:
            self._leases.pop(lease, None)

    def lost(self, lease: Lease) -> bool:
        """True once a renewal of a held lease failed for good."""
        with self._lock:
            tracked = self._leases.get(lease)
            return tracked is not None and tracked.lost

    @contextmanager
    def holding(self, lease: Lease) -> Iterator[Lease]:
        """Renew ``lease`` for the duration of the block."""
        self.hold(lease)
        try:
            yield lease
        finally:
            self.drop(lease)

    def __len__(self) -> int:
        with self._lock:
            return len(self._leases)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop renewing and join the thread (at most ``timeout`` seconds)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.renew_interval):
            try:
                self._tick()
            except Exception:  # never let one bad tick end renewal for every lease
                log.exception("lease renewal tick failed")

    def _tick(self) -> None:
        with self._lock:
            batch = [lease for lease, tracked in self._leases.items() if not tracked.lost]
        if not batch:
            return
        try:
            results = self.manager.renew_many(batch)
        except TierUnavailable as exc:
            self.failures += 1
            now = self._timer()
            with self._lock:
                for lease in batch:
                    tracked = self._leases.get(lease)
                    if tracked is not None and now - tracked.last_renewed >= lease.ttl:
                        tracked.lost = True
            log.warning("could not renew %d leases: %s", len(batch), exc)
            return
        now = self._timer()
        self.renewals += 1
        with self._lock:
            for lease, ok in zip(batch, results, strict=True):
                tracked = self._leases.get(lease)
                if tracked is None:
                    continue
                if ok:
                    tracked.last_renewed = now
                else:
                    tracked.lost = True
                    log.warning("lease of %s (token %d) was lost", lease.key, lease.token)

    def __repr__(self) -> str:
        return f"LeaseRenewer(leases={len(self)}, renew_interval={self.renew_interval!r})"
