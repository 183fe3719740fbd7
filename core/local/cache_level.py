"""The level contract: a bounded, LRU-evicting, per-entry-TTL mapping of ``str`` keys.

A level is a :class:`~collections.abc.MutableMapping` shaped like
``cachetools.Cache``: the eviction policy is one method (:meth:`CacheLevel.popitem`,
least-recently-used) and the size policy is one method (:meth:`CacheLevel.getsizeof`).
Its two kinds play different roles in a worker process:
:class:`~tiercel.core.local.memory_level.MemoryLevel` (the L1, live objects) and
:class:`~tiercel.core.local.bytes_level.BytesLevel` (the L2, encoded bytes).

Costs: ``get``, ``set``, ``del`` and eviction are O(1) (an ``OrderedDict`` keeps
recency order, so the oldest entry is always at the front and never searched
for). Per-entry expiry is checked on read; :meth:`CacheLevel.expire` removes
expired entries in O(k log n) for k expired entries through the level's
:class:`~tiercel.core.local.expiry.ExpiryHeap`. Every method takes the level's
lock, so one level may be shared by the threads of a worker.

Every entry is charged, once at insert, ``size + len(key) +`` :data:`ENTRY_OVERHEAD`
(``+`` :data:`~tiercel.core.local.expiry.EXPIRY_OVERHEAD` if it expires) against
``max_bytes``, where ``size`` is the caller's ``size=`` or else
:meth:`CacheLevel.getsizeof` of the value. The overheads are the level's own
measured bookkeeping, so for a ``BytesLevel`` ``max_bytes`` bounds real memory
(``python -m bench.levels_memory`` checks it).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, Final, TypeVar, overload

from tiercel.core.local.expiry import EXPIRY_OVERHEAD, ExpiryHeap
from tiercel.core.local.level_stats import LevelStats
from tiercel.core.missing import MISSING

__all__ = [
    "ENTRY_OVERHEAD",
    "EVICTED",
    "EXPIRED",
    "CacheLevel",
    "EvictionCallback",
    "Timer",
]

V = TypeVar("V")
_T = TypeVar("_T")

#: A clock returning seconds; only differences matter. Default :func:`time.monotonic`.
Timer = Callable[[], float]
#: ``on_evict(key, reason)``: called after an entry leaves a level on its own.
EvictionCallback = Callable[[str, str], None]

#: ``on_evict`` reason: removed by LRU to make room (entry or byte bound).
EVICTED: Final = "evicted"
#: ``on_evict`` reason: its TTL ran out.
EXPIRED: Final = "expired"

#: Bytes of the level's own bookkeeping charged for every entry, whatever its value:
#: the key's ``str`` header (49), the entry tuple (72), its size int (32) and expiry
#: float (24), and the ``OrderedDict`` slot, node and index share (~150, varying with
#: table fill and churn). Measured with tracemalloc on CPython 3.11 by
#: ``python -m bench.levels_memory`` (297 B at rest, 368 B at the peak of a churning
#: level of 6,000 entries, 331 B with 17,000); chosen so the traced peak stays
#: within 3% of ``max_bytes`` in those runs (transient table resizes make up the rest).
ENTRY_OVERHEAD: Final = 352

# An entry is a plain tuple, the cheapest object to build and index:
# entry[0] value, entry[1] expires_at or None, entry[2] charged size, entry[3] tags.
# (Literal indices rather than named constants: mypy types a tuple index only
# when it is a literal, and a module global lookup would cost on the hot path.)
_NO_TAGS: frozenset[str] = frozenset()


class CacheLevel(MutableMapping[str, V]):
    """A bounded LRU mapping with per-entry TTL, bounded by entry count and bytes.

    ``ttl`` (seconds) caps every entry's lifetime; ``set(..., ttl=)`` may only
    shorten it. An entry set at time ``t`` with ttl ``d`` is live while
    ``timer() < t + d``. ``None`` and other falsey values are valid values.

    Lookups through :meth:`get`, :meth:`get_with_ttl` and ``level[key]`` count
    a hit or a miss and refresh recency; ``key in level``, :meth:`pop` and
    iteration do neither.

    ``on_evict`` may be set to a callable ``(key, reason)`` called, outside the
    lock, when an entry leaves on its own (reason :data:`EVICTED` or
    :data:`EXPIRED`); explicit deletes and :meth:`clear` do not call it.
    """

    on_evict: EvictionCallback | None = None

    def __init__(
        self,
        name: str,
        *,
        max_entries: int,
        max_bytes: int | None = None,
        ttl: float | None = None,
        timer: Timer = time.monotonic,
    ) -> None:
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(
                f"level {name!r}: max_entries must be an int >= 1, got {max_entries!r}"
            )
        if max_bytes is not None and (
            isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1
        ):
            raise ValueError(
                f"level {name!r}: max_bytes must be an int >= 1 or None (unbounded), "
                f"got {max_bytes!r}"
            )
        if ttl is not None and not ttl > 0:  # `not >` also rejects NaN
            raise ValueError(
                f"level {name!r}: ttl must be > 0 seconds or None (no expiry), got {ttl!r}"
            )
        self._name = name
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._ttl = ttl
        self._timer = timer
        self._data: OrderedDict[str, tuple[V, float | None, int, frozenset[str]]] = OrderedDict()
        self._heap = ExpiryHeap()
        self._nbytes = 0
        # RLock: set() evicts through self.popitem(), a public (overridable) method
        # that takes the lock itself.
        self._lock = threading.RLock()
        self._hits = self._misses = self._evictions = self._expirations = self._rejected = 0

    # -- read-only configuration ---------------------------------------------------------

    @property
    def name(self) -> str:
        """The level's name, used in stats and logs."""
        return self._name

    @property
    def ttl(self) -> float | None:
        """The level's maximum entry lifetime in seconds (None: no level cap)."""
        return self._ttl

    @property
    def max_entries(self) -> int:
        """The entry-count bound."""
        return self._max_entries

    @property
    def max_bytes(self) -> int | None:
        """The byte bound (None: bounded by entry count only)."""
        return self._max_bytes

    # -- policies ------------------------------------------------------------------------

    def getsizeof(self, value: V) -> int:
        """Return the bytes ``value`` is charged when no ``size=`` is given (the size policy).

        The base policy is the shallow ``sys.getsizeof(value)``. The key and the
        level's bookkeeping are charged on top by :meth:`set`.
        """
        return sys.getsizeof(value)

    def popitem(self) -> tuple[str, V]:
        """Remove and return the least-recently-used entry (the eviction policy), in O(1).

        :meth:`set` calls it until both bounds hold, counting each call as an
        eviction; a direct call counts nothing. :class:`KeyError` when empty.
        """
        with self._lock:
            try:
                key, entry = self._data.popitem(last=False)
            except KeyError:
                raise KeyError(f"level {self._name!r} is empty") from None
            self._nbytes -= entry[2]
            return key, entry[0]

    # -- lookups (hot path: no properties, no allocations on a hit) ----------------------

    @overload
    def get(self, key: str) -> V | None: ...
    @overload
    def get(self, key: str, default: V | _T) -> V | _T: ...

    def get(self, key: str, default: Any = None) -> Any:
        """Return the live value of ``key`` or ``default``, counting a hit or a miss."""
        with self._lock:
            entry = self._data.get(key)
            if entry is not None:
                expires = entry[1]
                if expires is None or expires > self._timer():
                    self._data.move_to_end(key)
                    self._hits += 1
                    return entry[0]
                self._drop_expired(key, entry)
            self._misses += 1
        if entry is not None and self.on_evict is not None:
            self.on_evict(key, EXPIRED)
        return default

    def __getitem__(self, key: str) -> V:
        """Return the live value of ``key``, counting a hit; :class:`KeyError` on a miss."""
        # Inlined rather than calling get(): this is the path cachetools.cached uses.
        with self._lock:
            entry = self._data.get(key)
            if entry is not None:
                expires = entry[1]
                if expires is None or expires > self._timer():
                    self._data.move_to_end(key)
                    self._hits += 1
                    return entry[0]
                self._drop_expired(key, entry)
            self._misses += 1
        if entry is not None and self.on_evict is not None:
            self.on_evict(key, EXPIRED)
        raise KeyError(key)

    def get_with_ttl(self, key: str) -> tuple[V, float | None] | None:
        """Return ``(value, remaining seconds or None)`` for a live ``key``, else None.

        Counts a hit or a miss like :meth:`get`. The remaining time lets a caller
        promote the value to another level without extending its life.
        """
        with self._lock:
            entry = self._data.get(key)
            if entry is not None:
                expires = entry[1]
                if expires is None:
                    self._data.move_to_end(key)
                    self._hits += 1
                    return entry[0], None
                remaining = expires - self._timer()
                if remaining > 0:
                    self._data.move_to_end(key)
                    self._hits += 1
                    return entry[0], remaining
                self._drop_expired(key, entry)
            self._misses += 1
        if entry is not None and self.on_evict is not None:
            self.on_evict(key, EXPIRED)
        return None

    def __contains__(self, key: object) -> bool:
        """True if ``key`` is live. Counts nothing and does not refresh recency."""
        if not isinstance(key, str):
            return False
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return False
            expires = entry[1]
            return expires is None or expires > self._timer()

    # -- writes --------------------------------------------------------------------------

    def set(
        self,
        key: str,
        value: V,
        ttl: float | None = None,
        size: int | None = None,
        tags: frozenset[str] = _NO_TAGS,
    ) -> bool:
        """Store ``value`` under ``key``; return True if it was stored.

        The entry lives ``min(ttl, level ttl)`` seconds (whichever is given).
        ``size`` is the caller's size of the value in bytes; without it
        :meth:`getsizeof` is used. The entry is charged ``size + len(key)`` plus
        the level's bookkeeping (:data:`ENTRY_OVERHEAD`, :data:`EXPIRY_OVERHEAD`).
        Least-recently-used entries are evicted until both bounds hold.

        Returns False, storing nothing and removing any older value of ``key``
        (so a stale value is never left behind), when the effective ttl is <= 0
        or the entry alone is larger than ``max_bytes`` (counted as rejected).
        """
        level_ttl = self._ttl
        if ttl is None or (level_ttl is not None and level_ttl < ttl):
            ttl = level_ttl
        if size is None:
            size = self.getsizeof(value)
        elif size < 0:
            raise ValueError(f"level {self._name!r}: size must be >= 0 bytes, got {size!r}")
        size += len(key) + ENTRY_OVERHEAD
        if ttl is not None:
            size += EXPIRY_OVERHEAD
        max_bytes = self._max_bytes
        if (ttl is not None and not ttl > 0) or (max_bytes is not None and size > max_bytes):
            with self._lock:
                if ttl is None or ttl > 0:
                    self._rejected += 1
                old = self._data.pop(key, None)
                if old is not None:
                    self._nbytes -= old[2]
                    self._heap.bound(self._data)
            return False
        evicted: list[tuple[str, str]] | None = [] if self.on_evict is not None else None
        with self._lock:
            heap = self._heap
            data = self._data
            now = self._timer() if ttl is not None or heap else 0.0
            if ttl is None:
                expires = None
            else:
                expires = now + ttl
                heap.push(expires, key)
            old = data.get(key)
            data[key] = (value, expires, size, tags)
            if old is not None:
                data.move_to_end(key)
                self._nbytes += size - old[2]
            else:
                self._nbytes += size
            # Expired entries go before live ones are evicted for room.
            if heap.due(now):
                self._sweep(now, evicted)
            while len(data) > self._max_entries or (
                max_bytes is not None and self._nbytes > max_bytes
            ):
                evicted_key, _ = self.popitem()
                self._evictions += 1
                if evicted is not None:
                    evicted.append((evicted_key, EVICTED))
            heap.bound(data)
            stored = key in data
        if evicted:
            self._notify(evicted)
        return stored

    def __setitem__(self, key: str, value: V) -> None:
        """Same as :meth:`set` with the level's ttl; an oversize value is silently not stored."""
        self.set(key, value)

    def __delitem__(self, key: str) -> None:
        """Remove ``key``; :class:`KeyError` if it is absent or already expired."""
        if self._remove(key) is MISSING:
            raise KeyError(key)

    @overload
    def pop(self, key: str) -> V: ...
    @overload
    def pop(self, key: str, default: V) -> V: ...
    @overload
    def pop(self, key: str, default: _T) -> V | _T: ...

    def pop(self, key: str, default: Any = MISSING) -> Any:
        """Remove ``key`` and return its live value, else ``default`` (or :class:`KeyError`).

        Counts neither a hit nor a miss. An expired entry is removed and treated as absent.
        """
        value = self._remove(key)
        if value is MISSING:
            if default is MISSING:
                raise KeyError(key)
            return default
        return value

    def discard(self, key: str) -> bool:
        """Remove ``key`` if present; True if a live entry was removed."""
        return self._remove(key) is not MISSING

    def discard_tagged(self, tag: str) -> int:
        """Remove every entry carrying ``tag``; return how many were removed.

        An O(n) scan of the level under its lock: meant for rare administrative
        invalidation, not the request path (keep no per-tag index so that sets
        stay O(1) and cheap).
        """
        with self._lock:
            doomed = [key for key, entry in self._data.items() if tag in entry[3]]
            for key in doomed:
                self._nbytes -= self._data.pop(key)[2]
            self._heap.bound(self._data)
            return len(doomed)

    def clear(self) -> None:
        """Drop every entry (counters are kept; see :meth:`reset_stats`)."""
        with self._lock:
            self._data.clear()
            self._heap.clear()
            self._nbytes = 0

    def expire(self) -> int:
        """Remove every expired entry now; return how many were removed.

        O(k log n) for k expired entries: pops the expiry heap, never scans the level.
        """
        evicted: list[tuple[str, str]] | None = [] if self.on_evict is not None else None
        with self._lock:
            removed = self._sweep(self._timer(), evicted) if self._heap else 0
        if evicted:
            self._notify(evicted)
        return removed

    # -- iteration and size --------------------------------------------------------------

    def __len__(self) -> int:
        """The number of live entries (expired ones are swept first, cheaply)."""
        if self._heap:
            self.expire()
        return len(self._data)

    def __iter__(self) -> Iterator[str]:
        """Iterate over a snapshot of the live keys, least recently used first."""
        with self._lock:
            now = self._timer()
            keys = [key for key, entry in self._data.items() if entry[1] is None or entry[1] > now]
        return iter(keys)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._name!r}, entries={len(self._data)}, "
            f"bytes={self._nbytes}, max_entries={self._max_entries}, "
            f"max_bytes={self._max_bytes}, ttl={self._ttl})"
        )

    @property
    def nbytes(self) -> int:
        """Bytes charged by the entries held now (including expired ones not yet swept)."""
        return self._nbytes

    # -- stats ---------------------------------------------------------------------------

    @property
    def stats(self) -> LevelStats:
        """A consistent snapshot of the counters and occupancy."""
        with self._lock:
            return LevelStats(
                name=self._name,
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                expirations=self._expirations,
                entries=len(self._data),
                bytes=self._nbytes,
                max_entries=self._max_entries,
                max_bytes=self._max_bytes,
                rejected=self._rejected,
            )

    def reset_stats(self) -> None:
        """Zero the hit, miss, eviction, expiration and rejected counters."""
        with self._lock:
            self._hits = self._misses = self._evictions = self._expirations = 0
            self._rejected = 0

    # -- internals (caller holds the lock) -----------------------------------------------

    def _drop_expired(self, key: str, entry: tuple[V, float | None, int, frozenset[str]]) -> None:
        del self._data[key]
        self._nbytes -= entry[2]
        self._expirations += 1

    def _remove(self, key: str) -> Any:
        """Remove ``key``; return its value if it was live, else ``MISSING``."""
        with self._lock:
            entry = self._data.pop(key, None)
            if entry is None:
                return MISSING
            self._nbytes -= entry[2]
            self._heap.bound(self._data)
            expires = entry[1]
            return entry[0] if expires is None or expires > self._timer() else MISSING

    def _sweep(self, now: float, evicted: list[tuple[str, str]] | None) -> int:
        data = self._data
        removed = 0
        for key in self._heap.pop_expired(now, data):
            self._drop_expired(key, data[key])
            removed += 1
            if evicted is not None:
                evicted.append((key, EXPIRED))
        return removed

    def _notify(self, evicted: list[tuple[str, str]]) -> None:
        callback = self.on_evict
        if callback is not None:
            for key, reason in evicted:
                callback(key, reason)
