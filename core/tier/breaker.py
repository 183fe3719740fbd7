"""A circuit breaker, so a Redis outage costs one timeout per window, not one per call.

States:

``closed``
    Calls go through. ``failures`` consecutive failures (a timeout counts like
    any other failure) open the breaker.
``open``
    Calls fail fast (:meth:`CircuitBreaker.allow` returns False) until
    ``reset_after`` seconds have passed since the breaker opened.
``half_open``
    Exactly one caller (the probe) is let through; everyone else still fails
    fast. The probe's success closes the breaker, its failure reopens it. A
    probe that never reports back (its caller died) is forgotten after another
    ``reset_after`` seconds and a new probe is let through.

The closed-state :meth:`~CircuitBreaker.allow` and :meth:`~CircuitBreaker.record_success`
take no lock: they only read attributes (atomic under the GIL), so a healthy
hot path pays a few attribute loads. Every state change happens under the lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tiercel.core.errors import TierUnavailable

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    """Fail fast after ``failures`` consecutive failures; probe again after ``reset_after`` s.

    ``timer`` is injectable (``time.monotonic`` by default) so tests tick a
    fake clock instead of sleeping. Thread-safe.
    """

    def __init__(
        self,
        *,
        failures: int = 3,
        reset_after: float = 0.5,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1:
            raise ValueError(f"failures={failures!r}: expected 1 or more consecutive failures")
        if reset_after <= 0:
            raise ValueError(f"reset_after={reset_after!r}: expected a positive number of seconds")
        self.failures = failures
        self.reset_after = reset_after
        self._timer = timer
        self._lock = threading.Lock()
        self._state = CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probe_started = 0.0
        #: How many times the breaker has opened (including reopenings after a failed probe).
        self.opened = 0
        #: Calls refused without trying (open, or half-open with the probe taken).
        self.rejected = 0

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``."""
        return self._state

    def allow(self) -> bool:
        """May a call go through now? In ``open`` past ``reset_after`` this claims the probe."""
        if self._state is CLOSED:
            return True
        with self._lock:
            state = self._state
            if state is CLOSED:
                return True
            now = self._timer()
            if state is OPEN and now - self._opened_at >= self.reset_after:
                self._state = HALF_OPEN
                self._probe_started = now
                return True
            if state is HALF_OPEN and now - self._probe_started >= self.reset_after:
                # The previous probe never reported back; let another one try.
                self._probe_started = now
                return True
            self.rejected += 1
            return False

    def check(self) -> None:
        """Like :meth:`allow`, but raise :class:`TierUnavailable` when refused."""
        if not self.allow():
            raise TierUnavailable(
                f"circuit breaker is {self._state} after {self.failures} consecutive failures; "
                f"the next attempt is allowed within {self.reset_after:g}s"
            )

    def record_success(self) -> None:
        """A call succeeded: reset the failure count; a successful probe closes the breaker."""
        if self._state is CLOSED and self._consecutive == 0:
            return
        with self._lock:
            self._state = CLOSED
            self._consecutive = 0

    def record_failure(self) -> None:
        """A call failed: count it; open after ``failures`` in a row, or reopen after a probe."""
        with self._lock:
            if self._state is OPEN:
                # A call admitted before the breaker opened failed late: nothing new to learn.
                return
            self._consecutive += 1
            if self._state is HALF_OPEN or self._consecutive >= self.failures:
                self._state = OPEN
                self._opened_at = self._timer()
                self.opened += 1

    def reset(self) -> None:
        """Close the breaker and forget failures (after a reconfiguration, in tests)."""
        with self._lock:
            self._state = CLOSED
            self._consecutive = 0

    def snapshot(self) -> dict[str, int | str]:
        """State and counters for metrics: ``state``, ``opened``, ``rejected``, ``consecutive``."""
        with self._lock:
            return {
                "state": self._state,
                "opened": self.opened,
                "rejected": self.rejected,
                "consecutive": self._consecutive,
            }

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(state={self._state!r}, failures={self.failures}, "
            f"reset_after={self.reset_after:g}, opened={self.opened}, rejected={self.rejected})"
        )
