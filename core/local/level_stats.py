"""What one level reports: its counters and occupancy at one moment."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LevelStats"]


@dataclass(frozen=True)
class LevelStats:
    """A snapshot of one level's counters and occupancy. Counters add across processes."""

    name: str
    hits: int
    misses: int
    evictions: int
    expirations: int
    entries: int
    bytes: int
    max_entries: int
    max_bytes: int | None
    #: Sets refused because the value alone exceeded ``max_bytes``.
    rejected: int = 0

    @property
    def hit_ratio(self) -> float:
        """Hits over lookups; 0.0 before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0
