"""The level contract: a bounded, per-entry-TTL mapping of ``str`` keys, cost-aware or LRU.

A level is a :class:`~collections.abc.MutableMapping` shaped like
``cachetools.Cache``: the eviction policy is one method (:meth:`CacheLevel.popitem`)
and the size policy is one method (:meth:`CacheLevel.getsizeof`).
Its two kinds play different roles in a worker process:
:class:`~tiercel.core.local.memory_level.MemoryLevel` (the L1, live objects) and
:class:`~tiercel.core.local.bytes_level.BytesLevel` (the L2, encoded bytes).

Two eviction policies (``policy=``):

* ``"cost"`` (the default): keep what saves the most compute per unit of the
  level. Entries of a cache of computations differ by 100x and more in what a
  miss costs, so each key is scored by its expected saving: its recent
  frequency x ``sqrt(compute seconds)`` / the share of the level it occupies,
  ``max(size / max_bytes, 1 / max_entries)`` (the share of whichever bound
  binds: per byte in a byte-bounded level, per entry in an entry-bounded one).

  The structure is TinyLFU's (Einziger, Friedman and Manes, ACM ToS 2017): a
  small LRU *window* (1% of the level) takes every new entry; what leaves it
  is admitted to the *main* region only if it was asked for before (a
  :class:`~tiercel.core.local.frequency_sketch.FrequencySketch` count of 2 or
  more) and it scores above the main region's victim. The victim is chosen by
  sampling, as in Psounis and Prabhakar's randomized replacement (INFOCOM
  2001), Redis's LFU eviction and hyperbolic caching (Blankstein, Sen and
  Freedman, USENIX ATC 2017): the lowest score of 8 main entries drawn at
  random. Sampling is what lets cost count everywhere: a recency order (as
  Caffeine's segmented LRU) would protect what was used lately whatever it
  costs, and a priority queue over every entry (GreedyDual-Size-Frequency,
  Cherkasova 1998) costs O(log n) on every hit, never forgets a frequency and
  admits every one-off entry at a high priority, so a scan of costly keys
  displaces the hot set. Here a one-off scan passes through the window, is
  not admitted, and never touches the main region.

  Every new entry and every hit is counted: in the sketch while the entry is
  in the window, then in the entry's own use count (exact, one list slot,
  so a hit in the main region costs one increment); both are halved every
  100 x ``max_entries`` counts of the sketch or hits, whichever come first
  (the frequency forgets). The
  square root of the cost, not the cost: a frequency estimate of a key seen a
  few times is noisy, and a 100x cost range multiplies that noise into the
  ranking, so that expensive keys seen twice by chance displace cheap keys
  asked for every second. On the trace of ``python -m bench.trace`` (costs 1 to
  100 ms) ranking by ``frequency x cost`` spends as much compute on misses
  (0.80 of LRU's) as ``frequency x sqrt(cost)`` (0.79) but hits 5 points less
  often (33.6% against 38.5%).
* ``"lru"``: least recently used, the level's behaviour before the cost policy.

Costs: ``get``, ``set``, ``del`` and eviction are O(1) amortised (LRU keeps
recency in an ``OrderedDict``, so a victim is at its front; the cost policy
keeps the main region's keys in a list, drawn from by index, and compares 8;
it halves its use counts in O(n) once every 100 x n counts). Per-entry expiry is
checked on read; :meth:`CacheLevel.expire` removes expired entries in
O(k log n) for k expired entries through the level's
:class:`~tiercel.core.local.expiry.ExpiryHeap`. Every method takes the level's
lock, so one level may be shared by the threads of a worker.

Every entry is charged, once at insert, ``size + len(key) +`` :data:`ENTRY_OVERHEAD`
(``+`` :data:`~tiercel.core.local.expiry.EXPIRY_OVERHEAD` if it expires, ``+``
:data:`COST_OVERHEAD` under the cost policy) against
``max_bytes``, where ``size`` is the caller's ``size=`` or else
:meth:`CacheLevel.getsizeof` of the value. The overheads are the level's own
measured bookkeeping, so for a ``BytesLevel`` ``max_bytes`` bounds real memory
(``python -m bench.levels_memory`` checks it).
"""

from __future__ import annotations

import math
import random
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any, Final, TypeVar, overload

from tiercel.core.local.expiry import EXPIRY_OVERHEAD, ExpiryHeap
from tiercel.core.local.frequency_sketch import FrequencySketch
from tiercel.core.local.level_stats import LevelStats
from tiercel.core.missing import MISSING

__all__ = [
    "COST",
    "COST_OVERHEAD",
    "ENTRY_OVERHEAD",
    "EVICTED",
    "EXPIRED",
    "LRU",
    "POLICIES",
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

#: Policy: weigh entries by compute seconds saved per byte (W-TinyLFU, cost-weighted).
COST: Final = "cost"
#: Policy: least recently used.
LRU: Final = "lru"
#: Every policy a level takes.
POLICIES: Final = (COST, LRU)

#: Bytes the cost policy adds to an entry's bookkeeping: its slots in the main region's
#: two lists (or the window's ``OrderedDict``), two more tuple fields and its weight float.
#: Measured like ENTRY_OVERHEAD by ``python -m bench.levels_memory``.
COST_OVERHEAD: Final = 160

# entry[4] of a window entry; a main-region entry holds its index in the main list there.
_WINDOW: Final = -1
# The window's share of a level.
_WINDOW_SHARE: Final = 0.01
# How many main-region entries an admission compares, drawn at random.
_VICTIM_SAMPLE: Final = 8
# A key must have been counted this often to displace an entry: seen once is no
# evidence that it will be asked for again (this is what makes a scan pass through).
_MIN_ADMIT_COUNT: Final = 2
# The sketch is sized for this many entries of a byte-bounded level per byte bound.
_SKETCH_BYTES_PER_ENTRY: Final = 4096
# The victims are drawn from a fixed seed: a level replays the same way every run.
_SAMPLER_SEED: Final = 0x71E2CE1

# An entry is a plain tuple, the cheapest object to build and index:
# entry[0] value, entry[1] expires_at or None, entry[2] charged size, entry[3] tags;
# under the cost policy also entry[4] _WINDOW or its index in the main list, and
# entry[5] its weight (sqrt(compute seconds) per share of the level).
# (Literal indices rather than named constants: mypy types a tuple index only
# when it is a literal, and a module global lookup would cost on the hot path.)
_NO_TAGS: frozenset[str] = frozenset()


class CacheLevel(MutableMapping[str, V]):
    """A bounded mapping with per-entry TTL, bounded by entry count and bytes.

    ``ttl`` (seconds) caps every entry's lifetime; ``set(..., ttl=)`` may only
    shorten it. An entry set at time ``t`` with ttl ``d`` is live while
    ``timer() < t + d``. ``None`` and other falsey values are valid values.
    ``policy`` is :data:`COST` (the default) or :data:`LRU` (see the module
    docstring); ``set(..., cost=)`` gives an entry's compute seconds (unknown: the
    mean of the costs this level was given, 1.0 before any).

    Lookups through :meth:`get`, :meth:`get_with_ttl` and ``level[key]`` count
    a hit or a miss and refresh recency; ``key in level``, :meth:`pop` and
    iteration do neither.

    ``on_evict`` may be set to a callable ``(key, reason)`` called, outside the
    lock, when an entry leaves on its own (reason :data:`EVICTED`, also for an
    entry the cost policy did not admit, or :data:`EXPIRED`); explicit deletes
    and :meth:`clear` do not call it.
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
        policy: str = COST,
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
        if policy not in POLICIES:
            raise ValueError(
                f"level {name!r}: policy must be one of {', '.join(POLICIES)}, got {policy!r}"
            )
        self._name = name
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._ttl = ttl
        self._timer = timer
        self._policy = policy
        self._data: dict[str, tuple[Any, ...]]
        #: The LRU order (the entries' own OrderedDict) under the LRU policy, else None.
        self._lru: OrderedDict[str, tuple[Any, ...]] | None
        #: The cost policy's window, least recent first, else None.
        self._window: OrderedDict[str, None] | None
        #: The cost policy's main-region keys (each entry holds its index here) and, at the
        #: same index, how often each was used since it was counted in (halved with the sketch).
        self._main: list[str] = []
        self._uses: list[int] = []
        if policy == LRU:
            self._lru = self._data = OrderedDict()
            self._window = None
        else:
            self._lru = None
            self._data = {}
            self._window = OrderedDict()
            self._window_used = 0
            self._window_entries = max(1, int(max_entries * _WINDOW_SHARE))
            self._window_bytes = None if max_bytes is None else int(max_bytes * _WINDOW_SHARE)
            expected = max_entries
            if max_bytes is not None:
                expected = min(max_entries, max(1, max_bytes // _SKETCH_BYTES_PER_ENTRY))
            self._sketch = FrequencySketch(expected)
            self._draw = random.Random(_SAMPLER_SEED).randrange
            self._cost_sum = 0.0
            self._costs_known = 0
        self._heap = ExpiryHeap()
        self._nbytes = 0
        # RLock: set() evicts through self.popitem(), a public (overridable) method
        # that takes the lock itself.
        self._lock = threading.RLock()
        self._hits = self._misses = self._evictions = self._expirations = self._rejected = 0
        #: ``_hits`` when the cost policy last aged its counts.
        self._aged_at = 0

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

    @property
    def policy(self) -> str:
        """The eviction policy, :data:`COST` or :data:`LRU`."""
        return self._policy

    @property
    def entry_overhead(self) -> int:
        """Bytes of bookkeeping charged per entry on top of its size and key."""
        return ENTRY_OVERHEAD if self._window is None else ENTRY_OVERHEAD + COST_OVERHEAD

    # -- policies ------------------------------------------------------------------------

    def getsizeof(self, value: V) -> int:
        """Return the bytes ``value`` is charged when no ``size=`` is given (the size policy).

        The base policy is the shallow ``sys.getsizeof(value)``. The key and the
        level's bookkeeping are charged on top by :meth:`set`.
        """
        return sys.getsizeof(value)

    def popitem(self) -> tuple[str, V]:
        """Remove and return the entry the policy would evict next, in O(1).

        LRU: the least recently used; cost: the lowest score of 8 main-region
        entries drawn at random (the least recent window entry once the main region is empty). Under
        LRU :meth:`set` calls it until both bounds hold, counting each call as an
        eviction; a direct call counts nothing. :class:`KeyError` when empty.
        """
        with self._lock:
            lru = self._lru
            if lru is not None:
                try:
                    key, entry = lru.popitem(last=False)
                except KeyError:
                    raise KeyError(f"level {self._name!r} is empty") from None
                self._nbytes -= entry[2]
                value: V = entry[0]
                return key, value
            chosen = self._victim(None)
            if chosen is None:
                raise KeyError(f"level {self._name!r} is empty")
            victim = chosen[0]
            entry = self._data.pop(victim)
            self._nbytes -= entry[2]
            self._unlink(victim, entry)
            value = entry[0]
            return victim, value

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
                    lru = self._lru
                    if lru is not None:
                        lru.move_to_end(key)
                    elif entry[4] >= 0:  # in the main region: one more use
                        self._uses[entry[4]] += 1
                    else:
                        self._window_hit(key)
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
                    lru = self._lru
                    if lru is not None:
                        lru.move_to_end(key)
                    elif entry[4] >= 0:  # in the main region: one more use
                        self._uses[entry[4]] += 1
                    else:
                        self._window_hit(key)
                    self._hits += 1
                    value: V = entry[0]
                    return value
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
                remaining = None if expires is None else expires - self._timer()
                if remaining is None or remaining > 0:
                    lru = self._lru
                    if lru is not None:
                        lru.move_to_end(key)
                    elif entry[4] >= 0:  # in the main region: one more use
                        self._uses[entry[4]] += 1
                    else:
                        self._window_hit(key)
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

    def peek(self, key: str) -> tuple[float | None, int] | None:
        """``(remaining seconds or None, bytes charged)`` for a live ``key``, else None.

        For looking, not using (``tiercel cache inspect``): counts nothing, refreshes
        no recency and admits nothing, as ``key in level``."""
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return None
            expires = entry[1]
            remaining = None if expires is None else expires - self._timer()
            if remaining is not None and remaining <= 0:
                return None
            return remaining, entry[2]

    # -- writes --------------------------------------------------------------------------

    def set(
        self,
        key: str,
        value: V,
        ttl: float | None = None,
        size: int | None = None,
        tags: frozenset[str] = _NO_TAGS,
        cost: float | None = None,
    ) -> bool:
        """Store ``value`` under ``key``; return True if it was stored.

        The entry lives ``min(ttl, level ttl)`` seconds (whichever is given).
        ``size`` is the caller's size of the value in bytes; without it
        :meth:`getsizeof` is used. The entry is charged ``size + len(key)`` plus
        the level's bookkeeping (:attr:`entry_overhead`, :data:`EXPIRY_OVERHEAD`).
        ``cost`` is the compute seconds the value took (the cost policy weighs it;
        None: unknown). Entries are evicted by the policy until both bounds hold:
        under the cost policy that may be this entry itself, if it is not worth
        more than what it would displace (then False, counted as an eviction).

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
        window = self._window
        if window is not None:
            size += COST_OVERHEAD
        max_bytes = self._max_bytes
        if (ttl is not None and not ttl > 0) or (max_bytes is not None and size > max_bytes):
            with self._lock:
                if ttl is None or ttl > 0:
                    self._rejected += 1
                old = self._data.pop(key, None)
                if old is not None:
                    self._nbytes -= old[2]
                    self._unlink(key, old)
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
            if window is None:
                data[key] = (value, expires, size, tags)
                if old is not None:
                    self._lru.move_to_end(key)  # type: ignore[union-attr]
            else:
                weight = self._weight(size, cost)
                if old is None:
                    self._count(key)
                    data[key] = (value, expires, size, tags, _WINDOW, weight)
                    window[key] = None
                    self._window_used += size
                else:
                    place = old[4]
                    data[key] = (value, expires, size, tags, place, weight)
                    if place < 0:
                        window.move_to_end(key)
                        self._window_used += size - old[2]
            if old is not None:
                self._nbytes += size - old[2]
            else:
                self._nbytes += size
            # Expired entries go before live ones are evicted for room.
            if heap.due(now):
                self._sweep(now, evicted)
            if window is None:
                while len(data) > self._max_entries or (
                    max_bytes is not None and self._nbytes > max_bytes
                ):
                    evicted_key, _ = self.popitem()
                    self._evictions += 1
                    if evicted is not None:
                        evicted.append((evicted_key, EVICTED))
            else:
                self._make_room(evicted)
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
                entry = self._data.pop(key)
                self._nbytes -= entry[2]
                self._unlink(key, entry)
            self._heap.bound(self._data)
            return len(doomed)

    def clear(self) -> None:
        """Drop every entry (counters are kept; see :meth:`reset_stats`)."""
        with self._lock:
            self._data.clear()
            self._heap.clear()
            self._nbytes = 0
            self._main.clear()
            self._uses.clear()
            if self._window is not None:
                self._window.clear()
                self._window_used = 0

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
        """Iterate over a snapshot of the live keys: LRU, least recently used first;
        cost, in the order they were first stored."""
        with self._lock:
            now = self._timer()
            keys = [key for key, entry in self._data.items() if entry[1] is None or entry[1] > now]
        return iter(keys)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._name!r}, entries={len(self._data)}, "
            f"bytes={self._nbytes}, max_entries={self._max_entries}, "
            f"max_bytes={self._max_bytes}, ttl={self._ttl}, policy={self._policy!r})"
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
            self._rejected = self._aged_at = 0

    # -- internals (caller holds the lock) -----------------------------------------------

    def _drop_expired(self, key: str, entry: tuple[Any, ...]) -> None:
        del self._data[key]
        self._nbytes -= entry[2]
        self._expirations += 1
        self._unlink(key, entry)

    def _remove(self, key: str) -> Any:
        """Remove ``key``; return its value if it was live, else ``MISSING``."""
        with self._lock:
            entry = self._data.pop(key, None)
            if entry is None:
                return MISSING
            self._nbytes -= entry[2]
            self._unlink(key, entry)
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

    # -- the cost policy (caller holds the lock; self._window is not None) ---------------

    def _unlink(self, key: str, entry: tuple[Any, ...]) -> None:
        """Take a removed entry out of the window or the main list (nothing under LRU)."""
        window = self._window
        if window is None:
            return
        place = entry[4]
        if place < 0:
            del window[key]
            self._window_used -= entry[2]
            return
        main = self._main
        last = main.pop()
        last_uses = self._uses.pop()
        if last != key:  # the last key takes the removed one's place
            main[place] = last
            self._uses[place] = last_uses
            moved = self._data[last]
            self._data[last] = (*moved[:4], place, moved[5])

    def _window_hit(self, key: str) -> None:
        """A hit in the window counts towards its admission and refreshes its recency."""
        self._count(key)
        self._window.move_to_end(key)  # type: ignore[union-attr]

    def _count(self, key: str) -> None:
        """Count ``key`` in the sketch; age every count when the sketch halves, or when as
        many hits as the sketch's sample passed since the last aging (a level whose keys
        are all resident stores nothing, yet its use counts must forget too)."""
        sketch = self._sketch
        halved = sketch.add(key)
        if halved or self._hits - self._aged_at >= sketch.sample:
            if not halved:
                sketch.halve()
            self._halve_uses()

    def _halve_uses(self) -> None:
        """Halve the main region's use counts (the sketch halves with them)."""
        self._uses[:] = [uses >> 1 for uses in self._uses]
        self._aged_at = self._hits

    def _weight(self, size: int, cost: float | None) -> float:
        """``sqrt(compute seconds) / max(size / max_bytes, 1 / max_entries)``, scaled by
        ``max_entries`` (only comparisons matter)."""
        if cost is None or not cost >= 0:  # unknown (or NaN): as costly as the average
            cost = self._cost_sum / self._costs_known if self._costs_known else 1.0
        else:
            self._cost_sum += cost
            self._costs_known += 1
        root = math.sqrt(cost)
        max_bytes = self._max_bytes
        if max_bytes is None:
            return root
        share = size * self._max_entries / max_bytes
        return root / share if share > 1.0 else root

    def _victim(self, candidate: str | None) -> tuple[str, float] | None:
        """The entry to evict next and its score: the lowest score of 8 main-region entries
        drawn at random (never ``candidate``), else the least recent window entry (scored
        by its count in the sketch, as a window entry has no use count)."""
        main = self._main
        count = len(main)
        if count > 1 or (count == 1 and main[0] != candidate):
            draw = self._draw
            data = self._data
            uses = self._uses
            best: str | None = None
            best_score = 0.0
            for _ in range(_VICTIM_SAMPLE):
                place = draw(count)
                key = main[place]
                if key == candidate:
                    continue
                score = uses[place] * data[key][5]
                if best is None or score < best_score:
                    best, best_score = key, score
            if best is not None:
                return best, best_score
            place = next(i for i, key in enumerate(main) if key != candidate)
            return main[place], uses[place] * data[main[place]][5]
        window = self._window
        assert window is not None
        for key in window:
            if key != candidate:
                return key, self._sketch.estimate(key) * self._data[key][5]
        return None

    def _evict(self, key: str, evicted: list[tuple[str, str]] | None) -> None:
        entry = self._data.pop(key)
        self._nbytes -= entry[2]
        self._unlink(key, entry)
        self._evictions += 1
        if evicted is not None:
            evicted.append((key, EVICTED))

    def _make_room(self, evicted: list[tuple[str, str]] | None) -> None:
        """Move the window's overflow into the main region as candidates, then evict
        until both bounds hold: each candidate duels a sampled victim, the loser goes."""
        window = self._window
        assert window is not None
        data = self._data
        main = self._main
        window_bytes = self._window_bytes
        sketch = self._sketch
        candidates: list[str] = []
        while len(window) > self._window_entries or (
            window_bytes is not None and len(window) > 1 and self._window_used > window_bytes
        ):
            candidate, _ = window.popitem(last=False)
            entry = data[candidate]
            self._window_used -= entry[2]
            data[candidate] = (*entry[:4], len(main), entry[5])
            main.append(candidate)
            self._uses.append(sketch.estimate(candidate))
            candidates.append(candidate)
        max_bytes = self._max_bytes
        while len(data) > self._max_entries or (max_bytes is not None and self._nbytes > max_bytes):
            if not candidates:
                chosen = self._victim(None)
                assert chosen is not None  # over a bound, so not empty
                self._evict(chosen[0], evicted)
                continue
            candidate = candidates[0]
            count = self._uses[data[candidate][4]]
            # Seen once: rejected without looking for a victim (the cheap, common case).
            chosen = self._victim(candidate) if count >= _MIN_ADMIT_COUNT else None
            if chosen is None or count * data[candidate][5] <= chosen[1]:
                candidates.pop(0)
                self._evict(candidate, evicted)
            else:
                victim = chosen[0]
                if victim in candidates:
                    candidates.remove(victim)
                self._evict(victim, evicted)
