"""The hot memo: a call answered from its raw arguments, before any key is derived.

In front of a cache's first level, when that level holds live objects (a
:class:`~tiercel.core.local.memory_level.MemoryLevel`), each cached function
keeps a small map from its raw call arguments (:func:`call_key`) to the value
that level holds for the call's cache key. A call found there skips binding
the arguments, their canonical encoding, the digest, the generation read and
the level lookup: one dict lookup, one clock read and one comparison.

The memo mirrors the level and never knows more than it:

* an entry is made only from an answer of the level itself (never from the
  Redis tier or a computation, so every memo hit is a hit the level would have
  given, and is counted as one of that level);
* it lives no longer than the level's copy (its remaining TTL), the fresh part
  of the value's life (no stale value is ever answered from it), the
  generations' freshness (a version or namespace invalidation that no message
  announced) and the local levels' trust (the channel liveness deadline, so a
  memo never answers while the level itself would not);
* :class:`HotMemos` drops it whenever the level's copy goes or changes: an
  invalidation of its key, a newer value elsewhere, an eviction or expiry, a
  write; and drops every entry on a tag invalidation, a generation change or a
  clear. An entry made while any of that happened is refused, so a drop racing
  a call can never leave an old value behind.

Hits are counted in :attr:`HotMemo.hits` (one attribute increment); whoever
reports figures reads it at snapshot time. One answer in ``sample_every`` is
timed and handed to :attr:`HotMemo.on_sample` (:meth:`HotMemo.time_answers`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from tiercel.core.cache.lookup import Lookup
from tiercel.core.local.cache_level import CacheLevel
from tiercel.core.missing import MISSING

__all__ = ["HotMemo", "HotMemos", "call_key"]

#: Types whose values never compare equal to a value of another of these types.
_PLAIN: frozenset[type] = frozenset({int, str})
#: Types kept by type and value in a tagged key (their values compare across types:
#: ``True == 1 == 1.0``, so the type is part of the key).
_TYPED: frozenset[type] = frozenset({int, str, bool, bytes, type(None)})


def _part(value: Any) -> tuple[Any, ...] | None:
    """``(type, value)`` for an argument the memo may key, None for one it may not."""
    kind = type(value)
    if kind in _TYPED:
        return (kind, value)
    if kind is float:
        # 0.0 == -0.0, yet they are two cache keys; a NaN never equals itself (no hit).
        return (float, value) if value else None
    if kind is tuple:
        for item in value:
            if type(item) not in _PLAIN:
                return None
        return (tuple, value)
    return None


def call_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable | None:
    """A hashable key of one call's raw arguments, or None when the memo cannot key it.

    Two calls get equal keys only when their arguments have the same types and
    values (``f(1)``, ``f(1.0)`` and ``f(True)`` are three keys; ``0.0`` and
    ``-0.0`` are not keyed at all), so equal keys always mean equal cache keys.
    Several keys may lead to one cache key (``f(1)`` and ``f(x=1)``): that costs a
    memo entry, never a wrong answer. Keyed: ``int``, ``str``, ``bool``, ``bytes``,
    ``None``, non-zero ``float`` and tuples of ``int``/``str``, by position or
    keyword; anything else (subclasses included) returns None.
    """
    if not kwargs:
        if len(args) == 1:
            only = args[0]
            kind = type(only)
            if kind in _PLAIN:
                plain: Hashable = only  # the commonest call: the argument is its own key
                return plain
            # (type, value), as below, without the list or a call.
            if kind is float:
                return (float, only) if only else None
            if kind is tuple:
                for item in only:
                    if type(item) not in _PLAIN:
                        return None
                # The call's own args tuple, nothing built: no other key is a 1-tuple
                # holding a tuple (one plain argument is its own key, several plain ones
                # hold no tuple, and the (type, value) forms have 2 or more items).
                return args
        else:
            for arg in args:
                if type(arg) not in _PLAIN:
                    break
            else:
                return args  # plain positional arguments: the args tuple itself
    # (type, value) per argument, (name, type, value) per keyword: a type object stands
    # where a plain tuple has an int or a str, so no other form of key can equal these.
    parts: list[Any] = []
    for arg in args:
        part = _part(arg)
        if part is None:
            return None
        parts += part
    if kwargs:
        for name, arg in kwargs.items():
            part = _part(arg)
            if part is None:
                return None
            parts.append(name)
            parts += part
    return tuple(parts)


def _key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable | None:
    if not kwargs and len(args) == 1 and type(args[0]) in _PLAIN:
        plain: Hashable = args[0]
        return plain
    return call_key(args, kwargs)


class HotMemo:
    """One function's memo in front of one cache level (see the module docstring).

    An entry is ``(value, deadline, cache key)``; it answers while
    ``clock() < deadline``. ``max_entries`` bounds it (the oldest entry goes
    first); 0 disables it (the function's values may not live in a memory level).
    ``owner`` is whatever the memo was made for (a runtime): callers compare it by
    identity to know the memo is still theirs.
    """

    __slots__ = (
        "clock",
        "entries",
        "hits",
        "level",
        "mask",
        "max_entries",
        "on_sample",
        "owner",
        "registry",
        "sample_every",
        "source",
        "touches",
        "trusted_for",
    )

    def __init__(
        self,
        registry: HotMemos,
        level: CacheLevel[Any] | None,
        *,
        max_entries: int,
        clock: Callable[[], float],
        trusted_for: Callable[[], float] = lambda: float("inf"),
        owner: object = None,
    ) -> None:
        self.registry = registry
        self.level = level
        #: Seconds the level may still answer (the liveness deadline): an entry's bound.
        self.trusted_for = trusted_for
        #: The level's name: the source every answer of this memo is counted under.
        self.source = level.name if level is not None else ""
        self.max_entries = max_entries if level is not None else 0
        self.clock = clock
        self.owner = owner
        #: Calls answered from the memo (each one a hit of the level).
        self.hits = 0
        #: Of those, the ones also read from the level (see :meth:`time_answers`).
        self.touches = 0
        self.entries: dict[Hashable, tuple[Any, float, str]] = {}
        self.on_sample: Callable[[float], None] | None = None
        self.sample_every = 16
        #: ``hits & mask == mask`` picks one answer in ``sample_every``.
        self.mask = 15

    def time_answers(self, on_sample: Callable[[float], None], every: int) -> None:
        """Tell ``on_sample`` the seconds of one answer in ``every`` (a power of two).

        Timed or not, that answer also reads the level, as a hit: its recency and
        frequency (what its eviction policy weighs) follow the calls the memo
        answers, and an entry the level lost without saying so leaves the memo.
        """
        if every < 1 or every & (every - 1):
            raise ValueError(f"every={every}: expected a power of two")
        self.sample_every = every
        self.on_sample = on_sample
        self.mask = every - 1

    def entry(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, float, str] | None:
        """The live entry of the call ``(*args, **kwargs)`` (counted as a hit), else None."""
        key = _key(args, kwargs)
        if key is None:
            return None
        hits = self.hits
        if hits & self.mask != self.mask:
            found = self.entries.get(key)
            if found is not None and self.clock() < found[1]:
                self.hits = hits + 1
                return found
            return None
        return self._timed(key)

    def answer(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The value of the call ``(*args, **kwargs)`` (counted as a hit), else MISSING.

        :meth:`entry` written out again, :func:`call_key`'s commonest cases inlined:
        this is the hottest line of the library.
        """
        key: Hashable | None
        if kwargs:
            key = call_key(args, kwargs)
        elif len(args) == 1:
            key = only = args[0]
            kind = type(only)
            if kind is int or kind is str:
                pass
            elif kind is float:
                key = (float, only) if only else None
            elif kind is tuple:
                for item in only:
                    kind = type(item)
                    if kind is not int and kind is not str:
                        return MISSING
                key = args  # as call_key keys it
            else:
                key = call_key(args, kwargs)
        else:
            key = args
            for arg in args:
                kind = type(arg)
                if kind is not int and kind is not str:
                    key = call_key(args, kwargs)
                    break
        if key is None:
            return MISSING
        hits = self.hits
        if hits & self.mask != self.mask:
            found = self.entries.get(key)
            if found is not None and self.clock() < found[1]:
                self.hits = hits + 1
                return found[0]
            return MISSING
        timed = self._timed(key)
        return MISSING if timed is None else timed[0]

    def _timed(self, key: Hashable) -> tuple[Any, float, str] | None:
        started = time.perf_counter()
        found = self.entries.get(key)
        if found is None or not self.clock() < found[1]:
            return None
        self.hits += 1
        if self.on_sample is not None:
            self.on_sample(time.perf_counter() - started)
        level = self.level
        if level is not None:
            self.touches += 1
            if level.get_with_ttl(found[2]) is None:
                self.registry.forget(found[2])
        return found

    def mark(self) -> int:
        """Take before looking a call up; hand to :meth:`install` with its answer."""
        return self.registry.changes

    def install(
        self, key: Hashable | None, cache_key: str, found: Lookup, mark: int, lifetime: float
    ) -> bool:
        """Remember ``found`` for the call keyed ``key`` for at most ``lifetime`` seconds.

        Only an answer of this memo's level is kept, and only when nothing was dropped
        since ``mark`` was taken (see :meth:`mark`); returns whether it was kept.
        """
        lifetime = min(lifetime, self.trusted_for())
        if key is None or not self.max_entries or found.source != self.source or lifetime <= 0:
            return False
        registry = self.registry
        if registry.changes != mark:
            return False
        entries = self.entries
        old = entries.get(key)
        if old is not None:
            registry.unlink(old[2], self, key)
        elif len(entries) >= self.max_entries:
            for oldest in list(entries)[: max(1, self.max_entries // 16)]:
                gone = entries.pop(oldest, None)
                if gone is not None:
                    registry.unlink(gone[2], self, oldest)
        entry = (found.value, self.clock() + lifetime, cache_key)
        entries[key] = entry
        registry.link(cache_key, self, key)
        if registry.changes != mark:  # a drop raced this entry in: take it out again
            if entries.get(key) is entry:
                entries.pop(key, None)
            registry.unlink(cache_key, self, key)
            return False
        return True

    def clear(self) -> None:
        """Forget every entry."""
        self.entries.clear()


class HotMemos:
    """Every hot memo in front of one cache, and the drops that reach them.

    ``changes`` advances on every drop; :meth:`HotMemo.install` refuses an entry
    when it moved during the call that found it. Drops may come from any thread
    (the invalidation listener, an evicting writer): each step is a single dict or
    set operation, and the ``changes`` check after an insert catches a drop that
    ran between the lookup and the insert.
    """

    def __init__(self) -> None:
        self.changes = 0
        self._owners: dict[str, set[tuple[HotMemo, Hashable]]] = {}
        self._memos: list[HotMemo] = []
        self._watched: list[CacheLevel[Any]] = []
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        """True once a memo exists (a cache without memos pays nothing for drops)."""
        return bool(self._memos)

    def memo(
        self,
        level: CacheLevel[Any] | None,
        *,
        max_entries: int,
        clock: Callable[[], float],
        trusted_for: Callable[[], float] = lambda: float("inf"),
        owner: object = None,
    ) -> HotMemo:
        """A new memo in front of ``level`` (None, or a level of encoded values: disabled)."""
        memo = HotMemo(
            self,
            level,
            max_entries=max_entries,
            clock=clock,
            trusted_for=trusted_for,
            owner=owner,
        )
        with self._lock:
            self._memos.append(memo)
            if level is not None and all(known is not level for known in self._watched):
                self._watched.append(level)
                self._watch(level)
        return memo

    def memos(self) -> list[HotMemo]:
        """Every memo made here."""
        with self._lock:
            return list(self._memos)

    def _watch(self, level: CacheLevel[Any]) -> None:
        # An entry that leaves the level on its own (eviction, expiry) leaves the memo.
        previous = level.on_evict

        def left(key: str, reason: str) -> None:
            self.forget(key)
            if previous is not None:
                previous(key, reason)

        level.on_evict = left

    def link(self, cache_key: str, memo: HotMemo, key: Hashable) -> None:
        """Record that ``memo`` holds ``cache_key`` under ``key``."""
        owners = self._owners.get(cache_key)
        if owners is None:
            owners = self._owners.setdefault(cache_key, set())
        owners.add((memo, key))

    def unlink(self, cache_key: str, memo: HotMemo, key: Hashable) -> None:
        """Forget that record (the memo dropped or replaced the entry)."""
        owners = self._owners.get(cache_key)
        if owners is not None:
            owners.discard((memo, key))
            if not owners:
                self._owners.pop(cache_key, None)

    def forget(self, cache_key: str) -> None:
        """The level's copy of ``cache_key`` went or changed: drop every memo entry of it."""
        self.changes += 1
        owners = self._owners.pop(cache_key, None)
        if owners:
            for memo, key in list(owners):
                entry = memo.entries.get(key)
                if entry is not None and entry[2] == cache_key:
                    memo.entries.pop(key, None)

    def forget_many(self, cache_keys: Iterable[str]) -> None:
        """:meth:`forget` of each key."""
        for cache_key in cache_keys:
            self.forget(cache_key)

    def forget_all(self) -> None:
        """Drop every entry of every memo (a tag invalidation, a generation change, a clear)."""
        self.changes += 1
        self._owners.clear()
        for memo in self.memos():
            memo.clear()

    def hits(self, source: str) -> int:
        """Calls every memo in front of the level named ``source`` answered without
        reading the level (the level counted the others itself)."""
        return sum(memo.hits - memo.touches for memo in self.memos() if memo.source == source)
