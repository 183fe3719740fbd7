"""How often a key was asked for lately: a count-min sketch that forgets.

TinyLFU's frequency estimate (Einziger, Friedman and Manes, "TinyLFU: A Highly
Efficient Cache Admission Policy", ACM ToS 2017): four rows of small
counters, each key counted in one counter per row, read as the minimum of
its counters (an overestimate only through collisions). Increments are
conservative (only the smallest counters grow), counters saturate at
:data:`MAX_COUNT`, and after ``sample`` increments every counter is halved,
so the estimate follows a popularity that shifts instead of remembering the
distant past.

The four rows' slots come from one ``hash()`` by double hashing. A level counts
a key when it is *stored* (a miss that was computed or read from a slower
tier) or hit in its window, not on other hits: a resident key's use shows in
its segment (a hit promotes it), so the hit path past the window never touches
the sketch. A count of 2 or more means the key was asked for again.

Memory is fixed at ``4 * width`` bytes, allocated once: the width is the
smallest power of two >= 4 x the entries the level is expected to hold.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_COUNT", "FrequencySketch"]

#: Counters saturate here (4 bits' worth, as in TinyLFU: beyond it a key is simply hot).
MAX_COUNT: Final = 15

_MASK64: Final = (1 << 64) - 1
# An odd 64-bit multiplier: the second hash of double hashing (Kirsch and Mitzenmacher),
# so one hash() gives the four rows' slots h1, h1 + h2, h1 + 2 h2, h1 + 3 h2.
_SECOND: Final = 0x9E3779B97F4A7C15
# bytearray.translate with this table halves every counter in C.
_HALVE: Final = bytes(i >> 1 for i in range(256))


class FrequencySketch:
    """Estimated recent counts of keys, in fixed memory; the owning level's lock guards it."""

    __slots__ = ("_additions", "_mask", "_rows", "_sample")

    def __init__(self, expected_entries: int, *, sample_factor: int = 10) -> None:
        if expected_entries < 1:
            raise ValueError(f"expected_entries must be >= 1, got {expected_entries!r}")
        width = 16
        while width < 4 * expected_entries:
            width *= 2
        self._mask = width - 1
        self._rows = (bytearray(width), bytearray(width), bytearray(width), bytearray(width))
        #: Increments between two halvings: the sketch's memory, in stores.
        self._sample = sample_factor * expected_entries
        self._additions = 0

    @property
    def nbytes(self) -> int:
        """The counters' bytes (fixed)."""
        return len(self._rows) * (self._mask + 1)

    def _slots(self, key: str) -> tuple[int, int, int, int]:
        h1 = hash(key) & _MASK64
        h2 = ((h1 * _SECOND) & _MASK64) >> 32 | 1
        mask = self._mask
        return h1 & mask, (h1 + h2) & mask, (h1 + 2 * h2) & mask, (h1 + 3 * h2) & mask

    def add(self, key: str) -> None:
        """Count one use of ``key``; halve every counter once ``sample`` uses were counted."""
        a, b, c, d = self._slots(key)
        r0, r1, r2, r3 = rows = self._rows
        least = min(r0[a], r1[b], r2[c], r3[d])
        if least < MAX_COUNT:
            # Conservative update: only the counters at the minimum grow.
            if r0[a] == least:
                r0[a] = least + 1
            if r1[b] == least:
                r1[b] = least + 1
            if r2[c] == least:
                r2[c] = least + 1
            if r3[d] == least:
                r3[d] = least + 1
        self._additions += 1
        if self._additions >= self._sample:
            self._additions //= 2
            for row in rows:
                row[:] = row.translate(_HALVE)

    def estimate(self, key: str) -> int:
        """The estimated recent count of ``key`` (never an underestimate between halvings)."""
        a, b, c, d = self._slots(key)
        r0, r1, r2, r3 = self._rows
        return min(r0[a], r1[b], r2[c], r3[d])

    def clear(self) -> None:
        """Forget every count."""
        for row in self._rows:
            row[:] = bytes(len(row))
        self._additions = 0
