"""The multi-level cache: ordered local levels in front of the Redis tier.

Reads go fastest level first: a hit is promoted into the faster levels for
no longer than the value's remaining TTL; a miss everywhere computes once per
process (single-flight) and writes through every tier. Live objects live in
:class:`~tiercel.core.local.memory_level.MemoryLevel` levels, encoded frames in
:class:`~tiercel.core.local.bytes_level.BytesLevel` levels, so a bytes level never decodes on
write and a memory level never decodes on read.

Local levels answer only while the cache's ``trust`` (a
:class:`~tiercel.core.tier.liveness.ChannelLiveness` in a fleet process) says
no invalidation older than the staleness bound can be missing; otherwise a
read goes to the Redis tier, and computes when that does not answer. The
check is one clock read against a deadline the invalidation listener moves.

Cache trouble never reaches the caller: the Redis tier swallows and counts
its own errors, and a value the codec cannot encode is returned but kept only
in the memory levels.

Every computation is counted with its reason in :attr:`MultiLevelCache.misses`
(a :class:`~tiercel.core.cache.miss_book.MissBook`, fed by the miss loop and
by the levels' ``on_evict``); the hit path does not touch it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from tiercel.core.cache.fleet import Fleet
from tiercel.core.cache.hot_memo import HotMemo, HotMemos
from tiercel.core.cache.lookup import (
    SOURCE_COMPUTED,
    SOURCE_JOINED,
    SOURCE_REDIS,
    CacheState,
    Lookup,
)
from tiercel.core.cache.miss_book import MissBook
from tiercel.core.cache.miss_loop import MissLoop
from tiercel.core.cache.miss_reasons import REFRESH
from tiercel.core.cache.singleflight import SingleFlight
from tiercel.core.encoding.entry import Entry
from tiercel.core.errors import CodecError, TierUnavailable, ValueTooLarge
from tiercel.core.local.bytes_level import BytesLevel
from tiercel.core.local.cache_level import COST, CacheLevel
from tiercel.core.local.memory_level import MemoryLevel
from tiercel.core.tier.api import CacheTier
from tiercel.core.tier.redis_tier import PayloadSerializer


def _shared(name: str, doc: str) -> property:
    def get(self: MultiLevelCache) -> int:
        value: int = getattr(self._state, name)
        return value

    def set_(self: MultiLevelCache, value: int) -> None:
        setattr(self._state, name, value)

    return property(get, set_, doc=doc)


class LocalTrust(Protocol):
    """Says whether this process's local levels may answer now (see the module docstring).

    The levels answer while ``clock() < trusted_until``: read inline on the hit
    path rather than through a method, which would cost a call frame per hit.
    """

    clock: Callable[[], float]
    trusted_until: float

    def trusted(self) -> bool:
        """True while local levels may answer."""
        ...

    def remaining(self) -> float:
        """Seconds local levels may still answer (<= 0: not now)."""
        ...


class MultiLevelCache:
    """Local levels (fastest first) in front of an optional Redis tier.

    ``trust``: when given, local levels answer only while ``trust.trusted()``;
    None trusts them always (a process that shares no invalidations).
    """

    epoch = _shared("epoch", "Advances on every local invalidation (memos check it).")
    computed = _shared("computed", "Values computed through this cache.")
    compute_errors = _shared("compute_errors", "Computations that raised.")
    uncacheable = _shared("uncacheable", "Values the codec could not encode (kept local).")
    corrupt = _shared("corrupt", "Stored payloads that failed to decode (deleted).")
    drops = _shared(
        "drops", "Advances on every local drop: a value read remotely meanwhile is not promoted."
    )

    def __init__(
        self,
        *,
        serializer: PayloadSerializer,
        levels: Sequence[CacheLevel[Any]] = (),
        tier: CacheTier | None = None,
        fleet: Fleet | None = None,
        default_ttl: float = 3600.0,
        wall_clock: Callable[[], float] = time.time,
        trust: LocalTrust | None = None,
    ) -> None:
        if fleet is not None and tier is None:
            raise ValueError("a cache that shares computations (fleet=) needs the tier (tier=)")
        self.serializer = serializer
        self.levels: list[CacheLevel[Any]] = list(levels)
        self.tier = tier
        #: Shares computations and invalidations with other processes (None: this one only).
        self.fleet = fleet
        self.default_ttl = default_ttl
        self.trust = trust
        self._wall_clock = wall_clock
        self._flight = SingleFlight()
        self._state = CacheState()
        #: Every computation by task and reason, and duplicates (shared by views).
        self.misses = MissBook()
        for level in self.levels:
            level.on_evict = self.misses.left_level
        self._miss_loop = (
            MissLoop(fleet, self._state, self._encode_entry, book=self.misses)
            if fleet is not None and tier is not None
            else None
        )
        self._views: dict[tuple[str, ...], MultiLevelCache] = {}
        #: The hot memos in front of the first level, shared by every view.
        self.hot = HotMemos()

    # --- configuration ---

    def add_level(
        self,
        name: str,
        ttl: float | None,
        max_size: int,
        *,
        kind: str = "memory",
        max_bytes: int | None = None,
        policy: str = COST,
    ) -> CacheLevel[Any]:
        """Append a level (slower than those before it), as the seed's ``add_level``.

        ``kind`` is ``memory`` (live objects; ``max_size`` entries) or ``bytes``
        (encoded values; ``max_size`` entries and ``max_bytes`` bytes); ``policy``
        its eviction policy (``cost`` or ``lru``).
        """
        if any(level.name == name for level in self.levels):
            raise ValueError(f"a level named {name!r} already exists")
        level: CacheLevel[Any]
        if kind == "memory":
            level = MemoryLevel(
                name, max_entries=max_size, max_bytes=max_bytes, ttl=ttl, policy=policy
            )
        elif kind == "bytes":
            level = BytesLevel(
                name, max_entries=max_size, max_bytes=max_bytes, ttl=ttl, policy=policy
            )
        else:
            raise ValueError(f"kind={kind!r}: expected 'memory' or 'bytes'")
        level.on_evict = self.misses.left_level
        self.levels.append(level)
        return level

    def with_levels(self, names: Iterable[str] | None) -> MultiLevelCache:
        """A view of this cache that reads and writes only the named local levels
        (``()``: none, Redis only). It shares the levels, the tier, the fleet,
        single-flight and every counter; None returns this cache."""
        if names is None:
            return self
        wanted = tuple(names)
        view = self._views.get(wanted)
        if view is None:
            known = {level.name for level in self.levels}
            unknown = [name for name in wanted if name not in known]
            if unknown:
                raise ValueError(
                    f"no local level named {', '.join(map(repr, unknown))}; "
                    f"this process has {', '.join(sorted(known)) or 'none'}"
                )
            view = copy.copy(self)
            view.levels = [level for level in self.levels if level.name in wanted]
            view._views = {}
            self._views[wanted] = view
        return view

    def hot_memo(
        self,
        *,
        max_entries: int = 4096,
        clock: Callable[[], float] | None = None,
        owner: object = None,
    ) -> HotMemo:
        """A new hot memo (:mod:`tiercel.core.cache.hot_memo`) in front of this view's first
        level; disabled unless that level holds live objects. ``clock`` defaults to the
        trust's (else ``time.monotonic``)."""
        first = self.levels[0] if self.levels else None
        if clock is None:
            clock = self.trust.clock if self.trust is not None else time.monotonic
        return self.hot.memo(
            first if isinstance(first, MemoryLevel) else None,
            max_entries=max_entries,
            clock=clock,
            trusted_for=self.local_trust_remaining,
            owner=owner,
        )

    # --- reads ---

    def lookup(self, key: str, *, remote: bool = True) -> Lookup | None:
        """The value of ``key`` from the fastest tier holding it, promoted; None on a miss.

        ``remote=False`` looks in this process's levels only. While the levels are
        not trusted (see ``trust``) they are skipped.
        """
        trust = self.trust
        if trust is None or trust.clock() < trust.trusted_until:
            for index, level in enumerate(self.levels):
                found = level.get_with_ttl(key)
                if found is None:
                    continue
                stored, ttl = found
                if isinstance(level, BytesLevel):
                    try:
                        value = self.serializer.loads(stored)
                    except CodecError:
                        level.discard(key)
                        self.corrupt += 1
                        continue
                    self._promote(index, key, value, stored, ttl)
                else:
                    value = stored
                    self._promote(index, key, value, None, ttl)
                # A local hit promotes with the cost unknown: each level then assumes
                # the mean cost of what it holds.
                return Lookup(value, level.name, ttl)
        if not remote:
            return None
        return self.lookup_remote(key)

    def holds_locally(self, key: str) -> bool:
        """True if a local level may answer ``key`` now (trusted, live). Counts nothing,
        promotes nothing: for deciding, not answering."""
        return self.local_trust_remaining() > 0 and any(key in level for level in self.levels)

    def lookup_remote(self, key: str) -> Lookup | None:
        """The value of ``key`` from the Redis tier alone, promoted; None on a miss (or
        without a tier). For a caller that has just missed the local levels."""
        if self.tier is None:
            return None
        drops = self._state.drops
        entry = self.tier.get_entry(key)
        if entry is None:
            return None
        return self.accept_entry(key, entry, promote=drops == self._state.drops)

    def accept_entry(self, key: str, entry: Entry, *, promote: bool = True) -> Lookup | None:
        """Decode an entry read from the Redis tier (by any client) and promote it into the
        local levels; None when it is corrupt (deleted, counted) or already expired.

        Pass ``promote=False`` when :attr:`drops` moved while the entry was read.
        """
        try:
            value = self.serializer.loads(entry.payload)
        except CodecError:
            self.corrupt += 1
            if self.tier is not None:
                # Best effort: a read never fails because cleaning up failed.
                with contextlib.suppress(TierUnavailable):
                    self.tier.delete(key)
            return None
        ttl = entry.remaining_ttl(self._wall_clock())
        if ttl is not None and ttl <= 0:
            return None
        if promote and self.levels:
            self._promote(
                len(self.levels), key, value, entry.payload, ttl, entry.tags, entry.compute_seconds
            )
        return Lookup(value, SOURCE_REDIS, ttl, entry.compute_seconds)

    def promote_entry(self, key: str, value: Any, entry: Entry) -> None:
        """Copy ``value``, decoded from ``entry`` (read from the Redis tier), into the local
        levels for what is left of its TTL: :meth:`accept_entry`'s promotion, made later."""
        if not self.levels:
            return
        ttl = entry.remaining_ttl(self._wall_clock())
        if ttl is not None and ttl <= 0:
            return
        self._promote(
            len(self.levels), key, value, entry.payload, ttl, entry.tags, entry.compute_seconds
        )

    def local_trust_remaining(self) -> float:
        """Seconds this process's levels may still answer (infinite without ``trust``);
        a memo in front of the cache keeps an answer no longer than this."""
        return float("inf") if self.trust is None else self.trust.remaining()

    def get(self, key: str, *, default: Any = None) -> Any:
        """The cached value, or ``default`` (``None`` is a valid cached value).

        ``default`` is keyword-only: ``get(key, compute)`` would otherwise return the
        function itself on a miss. To compute on a miss use :meth:`get_or_compute`.
        """
        found = self.lookup(key)
        return default if found is None else found.value

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """Values of the keys that hit anywhere; the Redis tier is asked once (MGET)."""
        return {key: found.value for key, found in self.lookup_many(keys).items()}

    def lookup_many(self, keys: Iterable[str]) -> dict[str, Lookup]:
        """:meth:`lookup` of every key that hits anywhere, each with its source and TTL;
        the keys no local level holds are read from the Redis tier at once (MGET)."""
        found: dict[str, Lookup] = {}
        remote: list[str] = []
        for key in keys:
            hit = self.lookup(key, remote=False)
            if hit is None:
                remote.append(key)
            else:
                found[key] = hit
        if remote and self.tier is not None:
            drops = self._state.drops
            entries = self.tier.get_entries(remote)
            promote = drops == self._state.drops
            for key, entry in entries.items():
                accepted = self.accept_entry(key, entry, promote=promote)
                if accepted is not None:
                    found[key] = accepted
        return found

    def _promote(
        self,
        found_at: int,
        key: str,
        value: Any,
        frame: bytes | None,
        ttl: float | None,
        tags: Sequence[str] = (),
        cost: float | None = None,
    ) -> None:
        """Copy a hit into the levels faster than where it was found, for at most ``ttl``
        (``cost``: the value's compute seconds, when the tier it came from knows them)."""
        if found_at == 0:
            return
        if self.hot.active:
            self.hot.forget(key)
        tagset = frozenset(tags)
        for level in self.levels[:found_at]:
            if isinstance(level, BytesLevel):
                if frame is None:
                    frame = self._encode(value)
                    if frame is None:
                        continue
                level.set(key, frame, ttl=ttl, tags=tagset, cost=cost)
            else:
                level.set(
                    key,
                    value,
                    ttl=ttl,
                    size=len(frame) if frame is not None else None,
                    tags=tagset,
                    cost=cost,
                )

    # --- writes ---

    def _encode(self, value: Any) -> bytes | None:
        try:
            frame: bytes = self.serializer.dumps(value)
        except (CodecError, ValueTooLarge):
            self.uncacheable += 1
            return None
        return frame

    def set(
        self,
        key: str,
        value: Any,
        *,
        ttl: float | None = None,
        tags: Sequence[str] = (),
        compute_seconds: float = 0.0,
    ) -> None:
        """Write through every tier (Redis first, so local levels never outlive it)."""
        ttl = self.default_ttl if ttl is None else ttl
        if self.tier is not None:
            self.tier.set(key, value, ttl=ttl, tags=tags, compute_seconds=compute_seconds)
        self.store_local(key, value, None, ttl, tags, compute_seconds or None)

    def store_local(
        self,
        key: str,
        value: Any,
        frame: bytes | None,
        ttl: float | None,
        tags: Sequence[str],
        cost: float | None = None,
    ) -> None:
        """Put a value (and its encoded ``frame``, when known) into this process's levels;
        ``cost`` is its compute seconds (None: unknown), which the levels' policy weighs."""
        if self.hot.active:
            self.hot.forget(key)
        tagset = frozenset(tags)
        needs_frame = any(isinstance(level, BytesLevel) for level in self.levels)
        if frame is None and needs_frame:
            frame = self._encode(value)
        for level in self.levels:
            if isinstance(level, BytesLevel):
                if frame is not None:
                    level.set(key, frame, ttl=ttl, tags=tagset, cost=cost)
            else:
                level.set(
                    key,
                    value,
                    ttl=ttl,
                    size=len(frame) if frame is not None else None,
                    tags=tagset,
                    cost=cost,
                )

    def set_many(
        self, items: Mapping[str, Any], *, ttl: float | None = None, tags: Sequence[str] = ()
    ) -> None:
        """Write many values through every tier (one pipeline to Redis)."""
        ttl = self.default_ttl if ttl is None else ttl
        if self.tier is not None:
            self.tier.set_many(items, ttl=ttl, tags=tags)
        for key, value in items.items():
            self.store_local(key, value, None, ttl, tags)

    def get_or_compute(
        self,
        key: str,
        *,
        compute: Callable[[], Any],
        ttl: float | None = None,
        tags: Sequence[str] = (),
        inflight_id: str | None = None,
        known_missing: bool = False,
    ) -> Lookup:
        """The cached value of ``key``, or ``compute()`` stored through every tier.

        ``compute`` is passed by name (``get_or_compute(key, compute=load)``), as in
        :meth:`refresh`, so no call shape confuses it with a default value.

        Concurrent misses of one key in this process compute once; the others
        get ``source == "joined"``. With a fleet, concurrent misses in
        other processes join the same computation too. An exception from
        ``compute`` is not cached and reaches every caller waiting on it.
        ``inflight_id`` names the task whose in-flight marker the write clears;
        ``known_missing`` says the caller just looked ``key`` up and found nothing.
        """
        if not known_missing:
            found = self.lookup(key)
            if found is not None:
                return found
        miss_loop = self._miss_loop
        create = self._counted(compute)

        def compute_and_store() -> Lookup:
            if miss_loop is not None:
                # Only this caller (the single-flight leader) runs this, right after its
                # own lookup; the fleet-wide claim re-checks for a value in the same trip.
                return miss_loop.compute(
                    key,
                    create,
                    read=lambda: self.lookup(key),
                    store=self._local_storer(key, ttl, tags),
                    ttl=self.default_ttl if ttl is None else ttl,
                    tags=tags,
                    inflight_id=inflight_id,
                    checked=known_missing,
                )
            again = self.lookup(key)  # another process may have written it meanwhile
            if again is not None:
                return again
            self.misses.miss(key, self.misses.explain(key, None, ttl or self.default_ttl))
            started = time.perf_counter()
            try:
                value = create()
            except BaseException:
                self.misses.failed(key)
                raise
            elapsed = time.perf_counter() - started
            self.set(key, value, ttl=ttl, tags=tags, compute_seconds=elapsed)
            return Lookup(value, SOURCE_COMPUTED, ttl)

        result, joined = self._flight.do(key, compute_and_store)
        lookup: Lookup = result
        if joined:
            return Lookup(lookup.value, SOURCE_JOINED, lookup.ttl)
        return lookup

    def refresh(
        self,
        key: str,
        *,
        compute: Callable[[], Any],
        ttl: float | None = None,
        tags: Sequence[str] = (),
        inflight_id: str | None = None,
    ) -> Lookup | None:
        """Recompute ``key`` now although a value exists (an early or stale refresh).

        Returns None when another process is already refreshing it (it holds
        the key's lease); the current value stays until that one writes.
        """
        ttl = self.default_ttl if ttl is None else ttl
        create = self._counted(compute)
        if self._miss_loop is not None:
            return self._miss_loop.refresh(
                key,
                create,
                store=self._local_storer(key, ttl, tags),
                ttl=ttl,
                tags=tags,
                inflight_id=inflight_id,
            )
        self.misses.miss(key, REFRESH)
        started = time.perf_counter()
        value = create()
        self.set(key, value, ttl=ttl, tags=tags, compute_seconds=time.perf_counter() - started)
        return Lookup(value, SOURCE_COMPUTED, ttl)

    def _counted(self, compute: Callable[[], Any]) -> Callable[[], Any]:
        """``compute`` counted into this cache's ``computed`` and ``compute_errors``."""

        def create() -> Any:
            try:
                value = compute()
            except BaseException:
                self.compute_errors += 1
                raise
            self.computed += 1
            return value

        return create

    def _local_storer(
        self, key: str, ttl: float | None, tags: Sequence[str]
    ) -> Callable[[Any, bytes | None, float | None], None]:
        ttl = self.default_ttl if ttl is None else ttl
        return lambda value, frame, cost: self.store_local(key, value, frame, ttl, tags, cost)

    def _encode_entry(
        self, value: Any, ttl: float, tags: Sequence[str], compute_seconds: float
    ) -> tuple[bytes, bytes] | None:
        assert self.tier is not None  # a miss loop exists only beside a tier
        return self.tier.encode_entry(value, ttl=ttl, tags=tags, compute_seconds=compute_seconds)

    # --- invalidation ---

    def invalidate(self, *keys: str) -> None:
        """Remove ``keys`` from every tier (and, with a fleet, every process)."""
        if self.fleet is not None:
            self.fleet.invalidate(keys)
        elif self.tier is not None and keys:
            self.tier.delete(*keys)
        self.invalidate_local(keys)

    def advance_epoch(self) -> None:
        """Declare every memoized answer in front of this cache stale."""
        self.epoch += 1
        self.hot.forget_all()

    def discard_local(self, key: str) -> None:
        """Drop this process's copy of ``key`` because a newer value was written elsewhere.

        Unlike an invalidation this does not advance the epoch: the copy was a
        valid (older) answer, and memos may keep it for their short ``max_age``.
        """
        self._state.drops += 1
        for level in self.levels:
            level.discard(key)
        self.hot.forget(key)

    def invalidate_local(self, keys: Iterable[str]) -> None:
        """Remove ``keys`` from this process's levels only."""
        self.epoch += 1
        self._state.drops += 1
        for key in keys:
            for level in self.levels:
                level.discard(key)
        # As the epoch says: after any invalidation every memo answer is re-validated.
        self.hot.forget_all()

    def invalidate_tag(self, tag: str) -> int:
        """Remove every entry tagged ``tag`` from every tier; returns Redis keys removed."""
        if self.fleet is not None:
            removed = self.fleet.invalidate_tag(tag)
        else:
            removed = self.tier.invalidate_tag(tag) if self.tier is not None else 0
        self.invalidate_tag_local(tag)
        return removed

    def invalidate_tag_local(self, tag: str) -> int:
        """Remove entries tagged ``tag`` from this process's levels (a scan: rare, bounded)."""
        self.epoch += 1
        self._state.drops += 1
        self.hot.forget_all()
        return sum(level.discard_tagged(tag) for level in self.levels)

    def clear_local(self) -> None:
        """Drop this process's levels (after losing the invalidation channel)."""
        self.epoch += 1
        self._state.drops += 1
        self.hot.forget_all()
        for level in self.levels:
            level.clear()

    def expire(self) -> int:
        """Remove expired entries from every local level now; returns how many."""
        return sum(level.expire() for level in self.levels)

    # --- introspection ---

    def stats(self) -> dict[str, Any]:
        """Per-level and tier counters."""
        return {
            "levels": {level.name: self._level_stats(level) for level in self.levels},
            "redis": self.tier.stats if self.tier is not None else None,
            "computed": self.computed,
            "compute_errors": self.compute_errors,
            "joined": self._flight.joined,
            "uncacheable": self.uncacheable,
            "corrupt": self.corrupt,
            "fleet": self._state.fleet_counts() if self.fleet is not None else None,
            "misses": self.misses.misses(),
            "duplicates": self.misses.duplicate_series(),
        }

    def _level_stats(self, level: CacheLevel[Any]) -> Any:
        # A hot memo's answer is a hit of the level it mirrors, counted there.
        stats = level.stats
        hot = self.hot.hits(level.name) if self.hot.active else 0
        return dataclasses.replace(stats, hits=stats.hits + hot) if hot else stats

    def close(self) -> None:
        """Drop local levels and close the tier's connections."""
        self.clear_local()
        if self.tier is not None:
            self.tier.close()
