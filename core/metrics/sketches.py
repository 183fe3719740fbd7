"""Mergeable latency sketches: quantiles with a relative-accuracy guarantee.

A :class:`LatencySketch` is a DDSketch (Masson, Rim and Lee, VLDB 2019): a
value ``x > 0`` is counted in bucket ``ceil(log(x) / log(gamma))`` with
``gamma = (1 + a) / (1 - a)``, and a quantile is answered with a value that
is within relative error ``a`` (default 1%) of the true quantile of the
values added. Buckets of two sketches with the same ``a`` add, so merging the
sketches of many processes gives the sketch of the union: fleet-wide
percentiles are true percentiles, not averages of per-process percentiles.

Why the ``ddsketch`` library (DataDog's reference implementation, Apache-2.0)
rather than an HDR histogram or our own buckets:

* DDSketch's guarantee is relative to the value, which is the right one for
  latencies spanning microseconds (an L1 hit) to minutes (a computation); an
  HDR histogram needs its highest trackable value and significant digits
  chosen up front, and handles values outside that range badly.
* ``ddsketch`` is pure Python with typed sources (``py.typed``), imports no
  protobuf (only its optional ``ddsketch.pb`` does), and its collapsing store
  bounds memory. We use its public building blocks, the
  :class:`~ddsketch.LogarithmicMapping` (bucket index <-> value) and the
  :class:`~ddsketch.CollapsingLowestDenseStore` (bucket counts, at most
  ``bin_limit`` of them; beyond that the lowest buckets collapse into one, so
  only the fastest latencies lose accuracy). The mapping is the exact one
  above, so our buckets are DDSketch buckets.
* What the library lacks, this module adds: a JSON form (the library
  serialises only through protobuf, and snapshots travel through the Celery
  result backend as JSON), exact ``min``/``max``/``sum`` accessors, integer
  counts and a lock.

Cost, measured on the development machine (CPython 3.11): :meth:`LatencySketch.add`
takes ~0.5 us with its lock (the library's ``DDSketch.add``, which has none,
~0.4 us; a hand-written dict-of-buckets sketch is no faster: the logarithm
and the bucket update dominate). Cheap next to a computation or a Redis round
trip, not next to an L1 hit (~3.5 us); see :mod:`tiercel.core.metrics.registry` for how the L1
hit path is accounted for instead.

Thread safety: every public method takes the sketch's own lock, so one sketch
may be shared by the threads of a process. :meth:`LatencySketch.merge` copies
the other sketch under its lock before taking its own, so two sketches merging
into each other from two threads cannot deadlock.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from ddsketch import CollapsingLowestDenseStore, LogarithmicMapping

__all__ = ["DEFAULT_BIN_LIMIT", "DEFAULT_RELATIVE_ACCURACY", "LatencySketch"]

#: Relative accuracy of quantiles: an answer is within 1% of the true value.
DEFAULT_RELATIVE_ACCURACY: Final = 0.01
#: Most buckets a sketch keeps. At 1% accuracy one bucket spans ~2% of value,
#: so 2048 buckets cover 1 ns to ~10^8 s with no collapsing at all.
DEFAULT_BIN_LIMIT: Final = 2048

_ceil: Final = math.ceil
_log: Final = math.log

# Version of the to_dict() layout; from_dict() refuses others.
_FORMAT: Final = 1


class LatencySketch:
    """A mergeable quantile sketch of non-negative values (seconds, by convention).

    ``relative_accuracy`` is the guarantee ``a``: :meth:`quantile` answers within
    ``a * true value``. Sketches merge only with sketches of the same accuracy.
    ``bin_limit`` bounds memory (and the JSON form) to that many buckets.
    """

    __slots__ = (
        "_bin_limit",
        "_count",
        "_lock",
        "_mapping",
        "_max",
        "_max_possible",
        "_min",
        "_min_possible",
        "_multiplier",
        "_relative_accuracy",
        "_store",
        "_sum",
        "_zero_count",
    )

    def __init__(
        self,
        relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
        bin_limit: int = DEFAULT_BIN_LIMIT,
    ) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ValueError(
                f"relative_accuracy must be in (0, 1), got {relative_accuracy!r} "
                "(0.01 means quantiles within 1%)"
            )
        if isinstance(bin_limit, bool) or not isinstance(bin_limit, int) or bin_limit < 1:
            raise ValueError(f"bin_limit must be an int >= 1, got {bin_limit!r}")
        self._relative_accuracy = float(relative_accuracy)
        self._bin_limit = bin_limit
        self._mapping = LogarithmicMapping(self._relative_accuracy)
        # LogarithmicMapping's own key multiplier, computed the way it computes it.
        multiplier = 1 / math.log1p(2 * self._relative_accuracy / (1 - self._relative_accuracy))
        multiplier *= math.log(2)
        self._multiplier = multiplier
        self._min_possible = self._mapping.min_possible
        self._max_possible = self._mapping.max_possible
        self._store = CollapsingLowestDenseStore(bin_limit)
        self._zero_count = 0
        self._count = 0
        self._sum = 0.0
        self._min = math.inf
        self._max = -math.inf
        self._lock = threading.Lock()

    # -- configuration -------------------------------------------------------------------

    @property
    def relative_accuracy(self) -> float:
        """The guarantee ``a``: quantiles are within ``a`` relative error."""
        return self._relative_accuracy

    @property
    def bin_limit(self) -> int:
        """The most buckets this sketch keeps."""
        return self._bin_limit

    # -- recording -----------------------------------------------------------------------

    def add(self, value: float, count: int = 1) -> None:
        """Count ``value`` (>= 0) ``count`` times.

        A weight above 1 lets a sampled observation stand for the ``count``
        events it was drawn from. Values too small for the mapping (< ~1e-308)
        count as zero. :class:`ValueError` for a negative or NaN value or a
        count below 1.
        """
        if not 0.0 <= value <= self._max_possible:  # also rejects NaN and infinity
            raise ValueError(f"a sketch holds finite values >= 0 (durations), got {value!r}")
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count!r}")
        with self._lock:
            if value > self._min_possible:
                # LogarithmicMapping.key(value), inlined: the same expression on the
                # same multiplier, so the same bucket (tests check it against the
                # library); a method call less on every observation.
                key = int(_ceil(_log(value, 2.0) * self._multiplier))
                store = self._store
                if store.min_key <= key <= store.max_key:
                    store.bins[key - store.offset] += count
                    store.count += count
                else:  # outside the current range: let the store grow or collapse
                    store.add(key, count)
            else:
                self._zero_count += count
            self._count += count
            self._sum += value * count
            if value < self._min:
                self._min = value
            if value > self._max:
                self._max = value

    def merge(self, other: LatencySketch) -> None:
        """Add every value of ``other`` into this sketch (``other`` is unchanged).

        :class:`ValueError` if the two sketches have different relative accuracies.
        """
        if other._relative_accuracy != self._relative_accuracy:
            raise ValueError(
                f"cannot merge a sketch of relative accuracy {other._relative_accuracy} "
                f"into one of {self._relative_accuracy}: their buckets differ; build "
                "every sketch of a metric with the same accuracy"
            )
        source = other.copy()  # under other's lock only: no lock-order deadlock
        with self._lock:
            if source._bin_limit == self._bin_limit:
                self._store.merge(source._store)
            else:
                # The library's merge adopts the other store's limit when this one
                # is empty; re-adding keeps this sketch's own limit.
                for key, bucket_count in source._buckets():
                    self._store.add(key, bucket_count)
            self._zero_count += source._zero_count
            self._count += source._count
            self._sum += source._sum
            self._min = min(self._min, source._min)
            self._max = max(self._max, source._max)

    @classmethod
    def merged(cls, sketches: Iterable[LatencySketch]) -> LatencySketch:
        """A new sketch holding the values of all ``sketches`` (of one accuracy)."""
        result: LatencySketch | None = None
        for sketch in sketches:
            if result is None:
                result = sketch.copy()
            else:
                result.merge(sketch)
        return result if result is not None else cls()

    def clear(self) -> None:
        """Forget every value (the configuration is kept)."""
        with self._lock:
            self._store = CollapsingLowestDenseStore(self._bin_limit)
            self._zero_count = 0
            self._count = 0
            self._sum = 0.0
            self._min = math.inf
            self._max = -math.inf

    def reset_after_fork(self) -> None:
        """In a forked child: replace the lock (a parent thread may have held it) and clear.

        The values belong to the parent process, which reports them itself.
        """
        self._lock = threading.Lock()
        self.clear()

    def copy(self) -> LatencySketch:
        """An independent copy of this sketch."""
        clone = LatencySketch(self._relative_accuracy, self._bin_limit)
        with self._lock:
            clone._store.copy(self._store)
            clone._zero_count = self._zero_count
            clone._count = self._count
            clone._sum = self._sum
            clone._min = self._min
            clone._max = self._max
        return clone

    # -- reading -------------------------------------------------------------------------

    def quantile(self, q: float) -> float | None:
        """The value at quantile ``q`` (0 <= q <= 1), within the relative accuracy.

        The quantile is the lower one: the ``floor(q * (count - 1))``-th smallest
        value (0-based). Returns None when the sketch is empty. The smallest and
        largest values are exact; other answers are clamped to ``[min, max]``,
        which only ever moves them closer to the truth.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {q!r} (0.95 for p95)")
        with self._lock:
            if self._count == 0:
                return None
            rank = q * (self._count - 1)
            # The smallest and the largest value are known exactly.
            if rank < 1.0:
                return self._min
            if rank >= self._count - 1:
                return self._max
            if rank < self._zero_count:
                return 0.0
            key = self._store.key_at_rank(rank - self._zero_count)
            estimate = self._mapping.value(key)
            return min(max(estimate, self._min), self._max)

    @property
    def count(self) -> int:
        """How many values were added (weights included)."""
        return self._count

    @property
    def sum(self) -> float:
        """The exact sum of the values added."""
        return self._sum

    @property
    def min(self) -> float | None:
        """The exact smallest value added; None when empty."""
        return self._min if self._count else None

    @property
    def max(self) -> float | None:
        """The exact largest value added; None when empty."""
        return self._max if self._count else None

    @property
    def avg(self) -> float | None:
        """The exact mean of the values added; None when empty."""
        with self._lock:
            return self._sum / self._count if self._count else None

    @property
    def num_buckets(self) -> int:
        """Non-empty buckets held now (the size of the JSON form)."""
        with self._lock:
            return sum(1 for _ in self._buckets())

    def cumulative(self, bounds: Sequence[float]) -> list[int]:
        """How many values are at most each of the ascending ``bounds`` (a histogram's
        cumulative buckets); each value counts by its bucket's value, so a value within
        the relative accuracy of a bound may fall on either side of it."""
        with self._lock:
            buckets = self._buckets()
            value = self._mapping.value
            counts = []
            total, index = self._zero_count, 0
            for bound in bounds:
                while index < len(buckets) and value(buckets[index][0]) <= bound:
                    total += buckets[index][1]
                    index += 1
                counts.append(total)
            return counts

    # -- JSON form -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of this sketch; :meth:`from_dict` rebuilds it exactly.

        ``buckets`` maps the bucket index (a string, as JSON keys are) to its
        count, non-empty buckets only; the value of bucket ``i`` is within the
        accuracy of ``gamma ** i``. ``min``/``max`` are None when empty.
        """
        with self._lock:
            return {
                "format": _FORMAT,
                "relative_accuracy": self._relative_accuracy,
                "bin_limit": self._bin_limit,
                "count": self._count,
                "sum": self._sum,
                "min": self._min if self._count else None,
                "max": self._max if self._count else None,
                "zero_count": self._zero_count,
                "buckets": {str(key): count for key, count in self._buckets()},
            }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencySketch:
        """Rebuild a sketch from :meth:`to_dict` output (or its JSON round trip).

        :class:`ValueError` if ``data`` is not a sketch of this format.
        """
        try:
            if data["format"] != _FORMAT:
                raise ValueError(f"unknown sketch format {data['format']!r}")
            sketch = cls(float(data["relative_accuracy"]), int(data["bin_limit"]))
            zero_count = int(data["zero_count"])
            buckets = [(int(key), int(count)) for key, count in data["buckets"].items()]
            count = int(data["count"])
            total = float(data["sum"])
            low, high = data["min"], data["max"]
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"not a LatencySketch.to_dict() mapping ({exc!r}); "
                "expected format, relative_accuracy, bin_limit, count, sum, min, max, "
                "zero_count and buckets"
            ) from exc
        if zero_count < 0 or any(n < 1 for _, n in buckets):
            raise ValueError("sketch bucket counts must be positive")
        if zero_count + sum(n for _, n in buckets) != count:
            raise ValueError(f"sketch count {count} differs from the sum of its bucket counts")
        # Ascending keys grow the dense store one way only: fewer re-centrings.
        for key, n in sorted(buckets):
            sketch._store.add(key, n)
        sketch._zero_count = zero_count
        sketch._count = count
        sketch._sum = total
        if count:
            if low is None or high is None:
                raise ValueError("a non-empty sketch needs min and max")
            sketch._min = float(low)
            sketch._max = float(high)
        return sketch

    # -- internals -----------------------------------------------------------------------

    def _buckets(self) -> list[tuple[int, int]]:
        """(key, count) of the non-empty buckets, ascending; caller holds the lock."""
        store = self._store
        offset = store.offset
        return [(i + offset, int(n)) for i, n in enumerate(store.bins) if n]

    def __repr__(self) -> str:
        return (
            f"LatencySketch(count={self._count}, relative_accuracy={self._relative_accuracy}, "
            f"p50={self.quantile(0.5)}, p99={self.quantile(0.99)})"
        )
