"""One process's memory budget, shared by its local cache levels.

Each level bounds itself (entries and ``max_bytes``); the budget bounds their
sum. It reports current use, warns when the levels' own bounds add up to more
than the budget, and :meth:`MemoryBudget.enforce` evicts the entries each
level's policy would evict next (``level.popitem()``) from the largest level
until the sum fits.

Celery's ``worker_max_memory_per_child`` (KiB of *peak* resident memory,
``ru_maxrss``) recycles a prefork child after the task that crossed it. The
two work together when the budget plus the process's baseline stays below that
limit: levels then never push a child over it, and a child recycled for other
reasons starts with empty levels and new pools (they are built after fork by
the worker signals and closed at shutdown). :func:`fits_max_memory_per_child`
checks that arithmetic.
"""

from __future__ import annotations

import logging
import resource
import sys
import threading
from typing import Any, Protocol

__all__ = ["BudgetedLevel", "MemoryBudget", "fits_max_memory_per_child", "peak_rss_bytes"]

log = logging.getLogger("tiercel.memory")


class BudgetedLevel(Protocol):
    """What the budget needs of a level (:class:`CacheLevel` has it all)."""

    @property
    def name(self) -> str:
        """The level's name."""
        ...

    @property
    def nbytes(self) -> int:
        """Bytes currently charged to the level."""
        ...

    @property
    def max_bytes(self) -> int | None:
        """The level's own byte bound (``None``: unbounded by bytes)."""
        ...

    def popitem(self) -> tuple[str, Any]:
        """Evict the entry the level's policy would evict next (``KeyError`` when empty)."""
        ...


class MemoryBudget:
    """A per-process byte budget over registered levels."""

    def __init__(self, max_bytes: int, *, name: str = "process") -> None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(
                f"memory budget {name!r}: max_bytes must be an int >= 1, got {max_bytes!r}"
            )
        self.name = name
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._levels: list[BudgetedLevel] = []
        self.evictions = 0
        self.enforcements = 0

    def register(self, level: BudgetedLevel) -> None:
        """Count ``level`` against the budget (idempotent)."""
        with self._lock:
            if any(known is level for known in self._levels):
                return
            self._levels.append(level)
            reserved = self._reserved()
        if reserved is not None and reserved > self.max_bytes:
            log.warning(
                "memory budget %r: levels may hold %d bytes, over the budget of %d; "
                "enforce() will evict to fit",
                self.name,
                reserved,
                self.max_bytes,
            )

    def unregister(self, level: BudgetedLevel) -> None:
        """Stop counting ``level``."""
        with self._lock:
            self._levels = [known for known in self._levels if known is not level]

    def clear(self) -> None:
        """Forget every level (the process is shutting down)."""
        with self._lock:
            self._levels = []

    @property
    def levels(self) -> list[BudgetedLevel]:
        """The registered levels."""
        with self._lock:
            return list(self._levels)

    @property
    def used(self) -> int:
        """Bytes currently charged to the registered levels."""
        return sum(level.nbytes for level in self.levels)

    @property
    def available(self) -> int:
        """Bytes left before the budget is reached (negative when over)."""
        return self.max_bytes - self.used

    @property
    def reserved(self) -> int | None:
        """The sum of the levels' own ``max_bytes``; ``None`` if one is unbounded by bytes."""
        with self._lock:
            return self._reserved()

    def enforce(self) -> int:
        """Evict from the largest levels (by their policy) until use fits; returns entries
        evicted."""
        levels = self.levels
        evicted = 0
        used = sum(level.nbytes for level in levels)
        while used > self.max_bytes:
            largest = max(levels, key=lambda level: level.nbytes)
            before = largest.nbytes
            try:
                largest.popitem()
            except KeyError:
                break  # every level is empty; the rest is not ours to free
            evicted += 1
            used -= before - largest.nbytes
        if evicted:
            with self._lock:
                self.evictions += evicted
                self.enforcements += 1
        return evicted

    def snapshot(self) -> dict[str, Any]:
        """Budget, current use, per-level use and the process's peak RSS, as plain data."""
        levels = self.levels
        per_level = {
            level.name: {"nbytes": level.nbytes, "max_bytes": level.max_bytes} for level in levels
        }
        used = sum(entry["nbytes"] or 0 for entry in per_level.values())
        return {
            "name": self.name,
            "max_bytes": self.max_bytes,
            "used": used,
            "available": self.max_bytes - used,
            "reserved": self.reserved,
            "evictions": self.evictions,
            "levels": per_level,
            "peak_rss_bytes": peak_rss_bytes(),
        }

    def _reserved(self) -> int | None:
        total = 0
        for level in self._levels:
            if level.max_bytes is None:
                return None
            total += level.max_bytes
        return total


def peak_rss_bytes() -> int:
    """This process's peak resident memory in bytes: what Celery compares with the limit."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak if sys.platform == "darwin" else peak * 1024


def fits_max_memory_per_child(
    budget_bytes: int, limit_kib: int | None, baseline_bytes: int | None = None
) -> bool:
    """True when a child's levels can fill ``budget_bytes`` without crossing the limit.

    ``limit_kib`` is Celery's ``worker_max_memory_per_child`` (``None``/0: no limit);
    ``baseline_bytes`` is the child's memory before its levels fill (default: this
    process's peak RSS now).
    """
    if not limit_kib:
        return True
    baseline = peak_rss_bytes() if baseline_bytes is None else baseline_bytes
    return baseline + budget_bytes < limit_kib * 1024
