"""What a cache read answers, and the counters every view of one cache shares."""

from __future__ import annotations

from typing import Any, NamedTuple

#: Source names a lookup reports besides level names.
SOURCE_REDIS = "redis"
SOURCE_COMPUTED = "computed"
SOURCE_JOINED = "joined"


class Lookup(NamedTuple):
    """A value and where it came from: a level name, ``redis``, ``computed`` or ``joined``."""

    value: Any
    source: str
    ttl: float | None = None
    #: How long the value took to compute (known for values read from Redis).
    compute_seconds: float = 0.0


class CacheState:
    """Counters every view of one cache shares (see ``MultiLevelCache.with_levels``).

    ``epoch`` advances on every local invalidation: memos in front of the cache
    (see :mod:`tiercel.core.cache.memoize`) trust an answer only while it is unchanged.
    ``drops`` advances on every local drop (invalidation, or a newer value
    elsewhere): a value read from Redis while it moved may be outdated and is
    not promoted. The fleet counters (``leased`` to ``refreshed``) move only
    when the cache shares computations with other processes.
    """

    __slots__ = (
        "compute_errors",
        "computed",
        "corrupt",
        "degraded",
        "drops",
        "epoch",
        "failures_shared",
        "fenced",
        "fleet_joined",
        "leased",
        "refreshed",
        "takeovers",
        "uncacheable",
    )

    def __init__(self) -> None:
        self.epoch = 0
        self.drops = 0
        self.computed = 0
        self.compute_errors = 0
        self.uncacheable = 0
        self.corrupt = 0
        #: Computations run here under the key's lease.
        self.leased = 0
        #: Values another process computed while this one waited.
        self.fleet_joined = 0
        #: Leases taken over from a holder that went away.
        self.takeovers = 0
        #: Values computed here that a newer lease or an invalidation kept out.
        self.fenced = 0
        #: Computations run without a lease because the shared tier was down.
        self.degraded = 0
        #: Failures another process computed and shared with this one's waiters.
        self.failures_shared = 0
        #: Early or stale values recomputed under the key's lease.
        self.refreshed = 0

    def fleet_counts(self) -> dict[str, int]:
        """The fleet counters, named as the metrics name their events."""
        return {
            "computed": self.leased,
            "joined": self.fleet_joined,
            "takeovers": self.takeovers,
            "fenced": self.fenced,
            "degraded": self.degraded,
            "failures_shared": self.failures_shared,
            "refreshed": self.refreshed,
        }
