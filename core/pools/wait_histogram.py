"""Acquire waits in fixed log-spaced buckets, so histograms of many processes merge.

Every pool's :meth:`snapshot` carries one (see
:class:`~tiercel.core.pools.pool_metrics.PoolMetrics`): the buckets never
change, so merging two histograms is adding their counts.
"""

from __future__ import annotations

from typing import Any

__all__ = ["WAIT_BUCKETS_US", "WaitHistogram"]

#: Upper bounds (microseconds) of the wait-time buckets: 1 us, 2 us, 4 us ... 2**25 us
#: (~33.6 s); one more bucket counts everything above. Fixed, so histograms merge.
WAIT_BUCKETS_US: tuple[int, ...] = tuple(2**k for k in range(26))


class WaitHistogram:
    """Counts of waits in fixed log-spaced buckets (:data:`WAIT_BUCKETS_US`).

    Not thread-safe by itself: its owner records under its own lock.
    """

    __slots__ = ("count", "counts", "max_s", "sum_s")

    def __init__(self) -> None:
        self.counts = [0] * (len(WAIT_BUCKETS_US) + 1)
        self.count = 0
        self.sum_s = 0.0
        self.max_s = 0.0

    def record(self, seconds: float) -> None:
        """Count one wait of ``seconds``."""
        micros = int(seconds * 1_000_000)
        # Bucket k holds waits in (2**(k-1), 2**k] us; bit_length finds k in O(1).
        index = (micros - 1).bit_length() if micros > 1 else 0
        self.counts[min(index, len(WAIT_BUCKETS_US))] += 1
        self.count += 1
        self.sum_s += seconds
        if seconds > self.max_s:
            self.max_s = seconds

    def quantile(self, q: float) -> float:
        """Upper bound (seconds) of the bucket holding quantile ``q``; 0.0 when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be within [0, 1], got {q!r}")
        if self.count == 0:
            return 0.0
        rank = q * self.count
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank and n:
                if index >= len(WAIT_BUCKETS_US):
                    return self.max_s
                return min(WAIT_BUCKETS_US[index] / 1_000_000, self.max_s)
        return self.max_s

    def merge(self, other: WaitHistogram) -> None:
        """Add ``other``'s counts into this histogram."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.count += other.count
        self.sum_s += other.sum_s
        self.max_s = max(self.max_s, other.max_s)

    def snapshot(self) -> dict[str, Any]:
        """Plain data: bucket bounds, counts and summary figures."""
        return {
            "bounds_us": list(WAIT_BUCKETS_US),
            "counts": list(self.counts),
            "count": self.count,
            "sum_s": self.sum_s,
            "max_s": self.max_s,
            "p50_s": self.quantile(0.5),
            "p99_s": self.quantile(0.99),
        }
