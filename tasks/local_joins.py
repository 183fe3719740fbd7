"""The computations this process published, by key: later submits join them in memory.

A submit that misses every tier claims the key's in-flight marker in Redis and
publishes one task; every later submit of that key, until the value is
written, reads Redis (a miss) and tries the claim again (which names the task
already there): two round trips to learn what this process already knows.
With 2,000 submits over 200 keys from one client, that is ~3,600 round trips,
and the client's CPU is what the workers computing the 200 keys lack.

:class:`LocalJoins` remembers each task this process publishes under its own
claim, from the moment the claim succeeds (before the publish returns, so that
the process's concurrent submits of the key join at once; a publish that fails
takes the entry back), so a later submit of the key in this process joins it
with no round trip. An entry is used only while it is as true as the Redis
marker it copies:

* it lives no longer than the marker's TTL (set by the same claim);
* it is forgotten when the channel says the computation finished (``d|``) or
  failed (``f|``), or when a freed abandoned lease cleared the marker (which
  publishes ``d|``): then the next submit reads the value, or claims anew;
  and as soon as a handle of this process hears from the result backend that
  the task failed or was revoked;
* it is void after any local invalidation, generation change or channel reset
  (the cache's ``epoch`` moved), since the invalidation deleted the marker;
* it is not used while the local levels are not trusted (the channel is not
  known to be live), exactly as a local copy of a value is not.

Bounded: at most ``max_entries`` keys, the oldest forgotten first. Shared by
the threads of one process (one lock); built per process, after fork, by the
runtime.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["DEFAULT_MAX_ENTRIES", "LocalJoins"]

#: Keys remembered at most (a submit burst's distinct misses in flight at once).
DEFAULT_MAX_ENTRIES = 10_000


class _Published(NamedTuple):
    task_id: str
    until: float  # monotonic deadline: the Redis marker's TTL
    epoch: int  # the cache's epoch when it was claimed


class LocalJoins:
    """Task ids this process published, by key, while their in-flight claims hold."""

    __slots__ = ("_by_key", "_clock", "_lock", "max_entries")

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries={max_entries!r}: expected at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._by_key: dict[str, _Published] = {}

    def deadline(self, ttl: float) -> float:
        """When a claim made now for ``ttl`` seconds runs out (take it before claiming)."""
        return self._clock() + ttl

    def remember(self, key: str, task_id: str, until: float, epoch: int) -> None:
        """``task_id`` was published for ``key`` under a claim that holds until ``until``
        (see :meth:`deadline`), made while the cache's epoch was ``epoch``."""
        entry = _Published(task_id, until, epoch)
        with self._lock:
            self._by_key.pop(key, None)
            self._by_key[key] = entry
            while len(self._by_key) > self.max_entries:
                del self._by_key[next(iter(self._by_key))]

    def task_of(self, key: str, epoch: int) -> str | None:
        """The task computing ``key`` that this process published, if its claim still
        holds and nothing was invalidated since (``epoch``: the cache's now)."""
        now = self._clock()
        with self._lock:
            entry = self._by_key.get(key)
            if entry is None:
                return None
            if entry.epoch != epoch or now >= entry.until:
                del self._by_key[key]
                return None
            return entry.task_id

    def forget(self, key: str, task_id: str | None = None) -> None:
        """``key``'s computation finished, failed or was abandoned (with ``task_id``:
        only if the entry names that task)."""
        with self._lock:
            entry = self._by_key.get(key)
            if entry is not None and (task_id is None or entry.task_id == task_id):
                del self._by_key[key]

    def clear(self) -> None:
        """Forget every key (the channel was reset: messages may have been missed)."""
        with self._lock:
            self._by_key.clear()

    def __len__(self) -> int:
        return len(self._by_key)

    def __repr__(self) -> str:
        return f"LocalJoins({len(self)}/{self.max_entries})"
