"""Generation counters that are part of cache keys.

Bumping a generation (``invalidate_all`` of a function, or of a whole
namespace) makes every older key unreachable in O(1): the old entries are
never read again and age out of Redis by TTL or LRU. Each process keeps the
counters it has read for at most ``max_age`` seconds, the hard bound on how
long it can miss a bump; a subscriber to the invalidation channel makes that
immediate by calling :meth:`observe` (or :meth:`forget` after a reconnect).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from tiercel.core.errors import TierUnavailable


class GenerationStore(Protocol):
    """Where the shared counters live (the Redis tier)."""

    def generation(self, scope: str) -> int: ...

    def bump_generation(self, scope: str) -> int: ...

    def restore_generation(self, scope: str, value: int) -> int: ...


class Generations:
    """A process-local view of shared generation counters, refreshed after ``max_age``."""

    def __init__(
        self,
        store: GenerationStore | None,
        *,
        max_age: float = 1.0,
        timer: Callable[[], float] = time.monotonic,
        max_scopes: int = 10_000,
    ) -> None:
        self._store = store
        self._max_age = max_age
        self._timer = timer
        self._max_scopes = max_scopes
        self._lock = threading.Lock()
        self._known: dict[str, tuple[int, float]] = {}
        #: When (``timer()``) each scope's generation last moved, as this process saw it.
        self._moved: dict[str, float] = {}
        #: Called (outside any lock) when a known generation moves or is forgotten.
        self.on_change: Callable[[], None] | None = None
        #: Reads that found the store unreachable.
        self.unavailable = 0
        #: Counters this process wrote back after the store lost them.
        self.restored = 0

    @property
    def max_age(self) -> float:
        """Seconds a value read from the store is trusted without re-reading."""
        return self._max_age

    def current(self, scope: str) -> int:
        """The scope's generation, from memory when fresh, else from the store."""
        fresh = self.fresh(scope)
        if fresh is not None:
            return fresh
        try:
            value = self._store.generation(scope) if self._store is not None else 0
        except TierUnavailable:
            return self.unreadable(scope)
        used = self.accept(scope, value)
        if used > value and self._store is not None:
            # The store lost the counter (flushed or evicted); write it back, so
            # processes that never saw it converge on it too.
            with contextlib.suppress(TierUnavailable):
                self._store.restore_generation(scope, used)
                self.restored += 1
        return used

    def fresh(self, scope: str) -> int | None:
        """The scope's generation if read within ``max_age``; None: read the store.

        With :meth:`accept` and :meth:`unreadable` this is :meth:`current` for a
        caller that reads the store itself (an asyncio client): no I/O here.
        """
        known = self._known.get(scope)
        if known is not None and self._timer() - known[1] < self._max_age:
            return known[0]
        return None

    def fresh_for(self, scope: str) -> float:
        """Seconds the remembered generation of ``scope`` stays fresh (0: read next time).

        A memo of answers derived from it keeps them no longer than this.
        """
        known = self._known.get(scope)
        if known is None:
            return 0.0
        return max(0.0, self._max_age - (self._timer() - known[1]))

    def accept(self, scope: str, value: int) -> int:
        """Remember ``value``, just read from the store; returns the generation to use.

        Never goes backwards: when the store lost the counter (an answer below one
        remembered) the remembered one is used, or keys from before an invalidation
        would become reachable again; the caller then restores it in the store.
        """
        known = self._known.get(scope)
        if known is not None and value < known[0]:
            value = known[0]
        self._remember(scope, value, self._timer())
        return value

    def unreadable(self, scope: str) -> int:
        """The generation to use when the store cannot be read: the last one known (0
        for a scope never read); the store is tried again on the next call.

        Cache trouble must not fail a call; values cached under a guessed
        generation live only in this process's levels.
        """
        self.unavailable += 1
        known = self._known.get(scope)
        return known[0] if known is not None else 0

    def bump(self, scope: str) -> int:
        """Advance the scope's generation everywhere; returns the new value."""
        if self._store is None:
            value = self.current(scope) + 1
        else:
            value = self._store.bump_generation(scope)
        self._note_move(scope, self._timer())
        self._remember(scope, value, self._timer())
        return value

    def moved_ago(self, scope: str) -> float | None:
        """Seconds since this process last saw the scope's generation move (a bump here,
        a bump announced, or a newer value read); None if it never did."""
        moved = self._moved.get(scope)
        return None if moved is None else self._timer() - moved

    def observe(self, scope: str, value: int) -> None:
        """Apply a generation announced by another process."""
        with self._lock:
            known = self._known.get(scope)
            changed = known is None or value > known[0]
            if changed:
                self._known[scope] = (value, self._timer())
                self._note_move(scope, self._timer())
        if changed:
            self._changed()

    def forget(self, scopes: Iterable[str] | None = None) -> None:
        """Drop remembered values (all when ``scopes`` is None): re-read on next use."""
        with self._lock:
            if scopes is None:
                self._known.clear()
            else:
                for scope in scopes:
                    self._known.pop(scope, None)
        self._changed()

    def _note_move(self, scope: str, now: float) -> None:
        if len(self._moved) >= self._max_scopes and scope not in self._moved:
            self._moved.clear()  # bounded: a lost record only names fewer misses
        self._moved[scope] = now

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _remember(self, scope: str, value: int, now: float) -> None:
        with self._lock:
            if len(self._known) >= self._max_scopes and scope not in self._known:
                self._known.clear()  # bounded: re-reading is cheap, growing is not
            known = self._known.get(scope)
            if known is None or value >= known[0]:
                self._known[scope] = (value, now)
            moved = known is not None and value > known[0]
            if moved:
                self._note_move(scope, now)
        if moved:
            self._changed()
