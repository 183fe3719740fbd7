"""Whether this process's invalidation channel is live, as a deadline the listener advances.

A subscription that fails loudly (a closed socket, a dead server) is noticed
by the listener at once; one that goes *silent* (a NAT or load balancer that
drops an idle connection's packets without closing it) is not: no error is
raised when nothing arrives. So the listener sends a probe (``PING``, which a
subscribed connection answers in order with its messages, without fan-out to
other processes) every third of the bound, and each answer proves that every
message published before that probe was sent has been handled.

:class:`ChannelLiveness` turns that into one number, :attr:`trusted_until`
(``time.monotonic()`` seconds): the send time of the newest answered probe
plus the bound, plus an optional grace. Until then no invalidation older than
the bound can be missing, so the local levels may answer; after it they may
not. Checking it is one clock read and one comparison, cheap enough for the
L1 hit path.

The grace (``TIERCEL_OUTAGE_GRACE``, default 0) is the availability choice: a
process keeps answering local values for that much longer while its channel
is silent, and a local answer may then be up to ``bound + grace`` seconds
older than an invalidation.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["ChannelLiveness"]


class ChannelLiveness:
    """The deadline up to which this process's local levels may answer.

    Only the listener thread calls :meth:`confirm`; readers call
    :meth:`trusted` (a float read is atomic, so no lock is needed).
    ``lapses`` counts the times the channel was found lapsed when an answer
    came (each one drops the local levels).
    """

    __slots__ = ("bound", "clock", "grace", "lapses", "live_until", "trusted_until")

    def __init__(
        self, bound: float, *, grace: float = 0.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if bound <= 0:
            raise ValueError(f"bound={bound!r}: expected a positive number of seconds")
        if grace < 0:
            raise ValueError(f"grace={grace!r}: expected 0 or more seconds")
        self.bound = bound
        self.grace = grace
        #: The clock every deadline is read on (``time.monotonic`` unless injected).
        self.clock = clock
        #: Up to this clock reading no invalidation older than ``bound`` can be missing.
        self.live_until = float("-inf")
        #: :attr:`live_until` plus the grace: when local levels stop answering.
        self.trusted_until = float("-inf")
        self.lapses = 0

    @property
    def probe_interval(self) -> float:
        """How often the listener probes: a third of the bound."""
        return self.bound / 3

    def live(self) -> bool:
        """True while the channel is known live (an answer within the bound)."""
        return self.clock() < self.live_until

    def trusted(self) -> bool:
        """True while local levels may answer (live, or within the grace after)."""
        return self.clock() < self.trusted_until

    def remaining(self) -> float:
        """Seconds local levels may still answer (<= 0: not now)."""
        return self.trusted_until - self.clock()

    def lapsed(self) -> bool:
        """True when the channel is not known live: local state may have missed messages."""
        return not self.live()

    def confirm(self, sent_at: float) -> None:
        """A probe (or subscription) sent at ``sent_at`` was answered: advance the deadline.

        Call :meth:`lapsed` first, and drop local state when it says so, *before*
        this makes the levels answer again.
        """
        until = sent_at + self.bound
        if until > self.live_until:
            self.live_until = until
            self.trusted_until = until + self.grace

    def __repr__(self) -> str:
        return f"ChannelLiveness(bound={self.bound}, grace={self.grace}, live={self.live()})"
