"""When a level's entries expire: a min-heap of expiry times with lazy deletion.

A level pushes ``(expires_at, seq, key)`` for every entry that expires and never
searches the heap: a replaced, evicted or deleted entry leaves its item behind
(a *stale* item), told from a live one because the heap item shares the entry's
expiry ``float`` object, so ``is`` (not ``==``) matches them. Removing k expired
entries costs O(k log n). The heap is rebuilt from the live items once it holds
more than twice the live entries (plus a little slack), so it stays O(live) and
:data:`EXPIRY_OVERHEAD` stays a true bound on what it costs an entry.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from itertools import count
from typing import Any, Final

__all__ = ["EXPIRY_OVERHEAD", "ExpiryHeap"]

#: Extra bytes charged for an entry that expires: its expiry-heap item (a 3-tuple
#: and a sequence int, ~105) plus, in the worst case, one stale item of a replaced
#: or evicted entry that keeps its key and expiry alive (~180) until the heap is
#: rebuilt at twice the live entries. Measured: 672 B in all with ENTRY_OVERHEAD at
#: the peak of a churning 32 MiB level, 596-692 B for levels of 1-8 MiB.
EXPIRY_OVERHEAD: Final = 320

# Rebuild the expiry heap once it holds more than _HEAP_MAX_RATIO x the live entries
# + _HEAP_MIN (so tiny levels do not rebuild on every set); keeps it O(live).
_HEAP_MAX_RATIO = 2
_HEAP_MIN = 64


class ExpiryHeap:
    """The expiry times of one level's entries; the level's lock guards it.

    ``entries`` arguments map a key to the level's entry, a tuple whose item 1
    is the very ``float`` object pushed for it (or None: it never expires).
    """

    __slots__ = ("_items", "_seq")

    def __init__(self) -> None:
        self._items: list[tuple[float, int, str]] = []
        self._seq = count()

    def __len__(self) -> int:
        """Items held, stale ones included."""
        return len(self._items)

    def push(self, expires: float, key: str) -> None:
        """Note that ``key`` expires at ``expires``: the float object its entry keeps."""
        heapq.heappush(self._items, (expires, next(self._seq), key))

    def due(self, now: float) -> bool:
        """True if some item, live or stale, is due at ``now``."""
        items = self._items
        return bool(items) and items[0][0] <= now

    def pop_expired(self, now: float, entries: Mapping[str, tuple[Any, ...]]) -> Iterator[str]:
        """Pop every item due at ``now``, yielding the keys whose entry it still belongs to.

        The caller removes each yielded entry before asking for the next key.
        """
        items = self._items
        while items and items[0][0] <= now:
            expires, _, key = heapq.heappop(items)
            entry = entries.get(key)
            if entry is not None and entry[1] is expires:
                yield key

    def bound(self, entries: Mapping[str, tuple[Any, ...]]) -> None:
        """Drop the stale items once they outnumber the live ones.

        Stale items (of replaced, evicted or deleted entries) keep their keys alive:
        the rebuild is O(n) after >= n changes, so O(1) amortized, and the memory
        :data:`EXPIRY_OVERHEAD` charges stays a true bound.
        """
        if len(self._items) > _HEAP_MAX_RATIO * len(entries) + _HEAP_MIN:
            live = []
            for item in self._items:
                entry = entries.get(item[2])
                if entry is not None and entry[1] is item[0]:
                    live.append(item)
            heapq.heapify(live)
            self._items = live

    def clear(self) -> None:
        """Forget every item."""
        self._items.clear()
