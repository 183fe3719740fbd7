"""How often a key was asked for lately: a count-min sketch that forgets.

TinyLFU's frequency estimate (Einziger, Friedman and Manes, "TinyLFU: A Highly
Efficient Cache Admission Policy", ACM ToS 2017): four rows of small
counters, each key counted in one counter per row, read as the minimum of
its counters (an overestimate only through collisions). Increments are
conservative (only the smallest counters grow), counters saturate at
:data:`MAX_COUNT`, and after ``sample`` increments every counter is halved,
so the estimate follows a popularity that shifts instead of remembering the
distant past.

Sized for a cost-weighted ranking rather than TinyLFU's hit-or-not admission:
a score multiplies the count by a cost that spans 100x, so the count needs
more range and fewer collisions than a hit-ratio policy does. Counters are
8 bits (TinyLFU and Caffeine use 4), a row is at least 16 counters per entry
the level holds (Caffeine: 1; the keys a level turns away outnumber the ones
it keeps 10x and 100x, and at 4 per entry they shared counters with the kept
ones often enough to cost the trace of ``python -m bench.trace`` 4 points of
hit ratio), and counts are halved every 100 x ``expected_entries`` increments
(TinyLFU: 10 x; on that trace 10x spent 0.85 of LRU's compute on misses, 100x
0.79).

The four rows' slots come from one ``hash()`` by double hashing. A level counts
every key it stores (a miss that was computed or read from a slower tier) and
every hit while the key is in its window; a key admitted past the window keeps
its own exact count (the level halves those with the sketch, see :meth:`halve`).
A count of 2 or more means the key was asked for again.

Memory is fixed at ``4 * width`` bytes, allocated once: 64 bytes per expected entry, at
least 32 KiB.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_COUNT", "MIN_WIDTH", "SAMPLE_FACTOR", "WIDTH_FACTOR", "FrequencySketch"]

#: Counters saturate here (8 bits: beyond it a key is simply hot).
MAX_COUNT: Final = 255
#: A row's counters per expected entry (rounded up to a power of two).
WIDTH_FACTOR: Final = 16
#: The fewest counters in a row: a small level sees scans as long as a large one's, and
#: at 8,192 counters 1,000 one-off keys make a false "seen before" about 1 in 6,000.
MIN_WIDTH: Final = 8192
#: Increments between two halvings, per expected entry.
SAMPLE_FACTOR: Final = 100

# bytearray.translate with this table halves every counter in C.
_HALVE: Final = bytes(i >> 1 for i in range(256))


class FrequencySketch:
    """Estimated recent counts of keys, in fixed memory; the owning level's lock guards it."""

    __slots__ = ("_additions", "_mask", "_rows", "_sample")

    def __init__(self, expected_entries: int, *, sample_factor: int = SAMPLE_FACTOR) -> None:
        if expected_entries < 1:
            raise ValueError(f"expected_entries must be >= 1, got {expected_entries!r}")
        width = MIN_WIDTH
        while width < WIDTH_FACTOR * expected_entries:
            width *= 2
        self._mask = width - 1
        self._rows = (bytearray(width), bytearray(width), bytearray(width), bytearray(width))
        #: Increments between two halvings: the sketch's memory, in counts.
        self._sample = sample_factor * expected_entries
        self._additions = 0

    @property
    def nbytes(self) -> int:
        """The counters' bytes (fixed)."""
        return len(self._rows) * (self._mask + 1)

    def add(self, key: str) -> bool:
        """Count one use of ``key``; halve every counter once ``sample`` uses were counted
        (then return True)."""
        # Slots inlined (see estimate): this runs on every store and window hit of a level.
        h = hash(key)
        step = h >> 32 | 1
        mask = self._mask
        a, b, c, d = h & mask, (h + step) & mask, (h + 2 * step) & mask, (h + 3 * step) & mask
        r0, r1, r2, r3 = self._rows
        x0, x1, x2, x3 = r0[a], r1[b], r2[c], r3[d]
        least = x0 if x0 < x1 else x1
        if x2 < least:
            least = x2
        if x3 < least:
            least = x3
        if least < MAX_COUNT:
            # Conservative update: only the counters at the minimum grow.
            least += 1
            if x0 < least:
                r0[a] = least
            if x1 < least:
                r1[b] = least
            if x2 < least:
                r2[c] = least
            if x3 < least:
                r3[d] = least
        self._additions += 1
        if self._additions < self._sample:
            return False
        self.halve()
        return True

    @property
    def sample(self) -> int:
        """Increments between two halvings."""
        return self._sample

    def halve(self) -> None:
        """Halve every counter now (as every ``sample`` increments do)."""
        self._additions //= 2
        for row in self._rows:
            row[:] = row.translate(_HALVE)

    def estimate(self, key: str) -> int:
        """The estimated recent count of ``key`` (never an underestimate between halvings)."""
        # Double hashing from one hash(): the low bits place the first row's counter, the
        # high bits give the odd step to the next rows' (Kirsch and Mitzenmacher).
        h = hash(key)
        step = h >> 32 | 1
        mask = self._mask
        r0, r1, r2, r3 = self._rows
        return min(
            r0[h & mask],
            r1[(h + step) & mask],
            r2[(h + 2 * step) & mask],
            r3[(h + 3 * step) & mask],
        )

    def clear(self) -> None:
        """Forget every count."""
        for row in self._rows:
            row[:] = bytes(len(row))
        self._additions = 0
