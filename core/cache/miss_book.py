"""One cache's account of its misses: how many per task and reason, and duplicates.

:class:`MissBook` is owned by a
:class:`~tiercel.core.cache.multilevel.MultiLevelCache` and told by its miss
path (never its hit path) of every computation: the reason
(:mod:`tiercel.core.cache.miss_reasons`) and, when the fleet's rules should
have prevented it, a duplicate cause. Counts are kept per task, the function
name of the key (:class:`~tiercel.core.encoding.cache_key.CacheKey`), bounded
like the per-task request counts: past :data:`MAX_SERIES` pairs new tasks count
under ``_other``; a key that is not a tiercel value key counts under ``_other``.

It also remembers, bounded, the recent local fates of keys (evicted or expired
from a level, see ``CacheLevel.on_evict``, or computed with an error nobody
cached), which name a miss the shared tier has no record of.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from tiercel.core.cache import miss_reasons
from tiercel.core.encoding.cache_key import CacheKey
from tiercel.core.local.cache_level import EVICTED as LEVEL_EVICTED
from tiercel.core.tier.history import History

#: Most (task, reason) and (task, cause) pairs counted; beyond, under task ``_other``.
MAX_SERIES: Final = 2000
#: The task label of overflow and of keys that name no task.
OTHER_TASK: Final = "_other"
#: How many keys' local fates are remembered (least recent forgotten first).
MAX_FATES: Final = 4096

#: ``generation_moved(task, within)``: the invalidation reason of a generation of
#: ``task`` (or its namespace) that moved in the last ``within`` seconds, or None.
GenerationMoves = Callable[[str, float], "str | None"]


def generation_moves(
    moved_ago: Callable[[str], float | None],
    scope_of: Callable[[str], str],
    namespace_scope: str,
) -> GenerationMoves:
    """A :data:`GenerationMoves` over ``moved_ago(scope)`` (see ``Generations.moved_ago``):
    the latest move of the function's own generation (its ``invalidate_all``) or the
    namespace's, if within the window."""

    def moved(task: str, within: float) -> str | None:
        candidates = [
            (ago, reason)
            for ago, reason in (
                (moved_ago(scope_of(task)), miss_reasons.INVALIDATED_VERSION),
                (moved_ago(namespace_scope), miss_reasons.INVALIDATED_NAMESPACE),
            )
            if ago is not None and ago <= within
        ]
        return min(candidates)[1] if candidates else None

    return moved


def task_of(key: str) -> str:
    """The task (function name) a value key belongs to, or :data:`OTHER_TASK`."""
    try:
        return CacheKey.of(key).name
    except ValueError:
        return OTHER_TASK


class MissBook:
    """Miss reasons and duplicate computations per task; thread-safe, bounded."""

    def __init__(self, *, max_series: int = MAX_SERIES, max_fates: int = MAX_FATES) -> None:
        self.max_series = max_series
        self.max_fates = max_fates
        self._lock = threading.Lock()
        self._misses: dict[tuple[str, str], int] = {}
        self._duplicates: dict[tuple[str, str], int] = {}
        self._fates: OrderedDict[str, str] = OrderedDict()
        #: Set by the process that knows the generations (see :data:`GenerationMoves`).
        self.generation_moved: GenerationMoves | None = None

    # --- what happened ---

    def miss(self, key: str, reason: str) -> None:
        """Count one computation of ``key`` for ``reason``."""
        self.miss_of_task(task_of(key), reason)

    def miss_of_task(self, task: str, reason: str) -> None:
        """Count one miss of ``task`` (when there is no key: an unencodable argument)."""
        with self._lock:
            self._count(self._misses, task, reason)

    def duplicate(self, key: str, cause: str) -> None:
        """Count one computation of ``key`` the fleet should have prevented."""
        with self._lock:
            self._count(self._duplicates, task_of(key), cause)

    def leased(self, key: str, history: History | None, ttl: float, *, took_over: bool) -> None:
        """A computation of ``key`` under a lease the acquire script granted with
        ``history``; ``took_over`` says its caller waited on another holder first."""
        self.miss(key, self.explain(key, history, ttl))
        cause = miss_reasons.LEASE_EXPIRED if took_over else miss_reasons.duplicate_cause(history)
        if cause is not None:
            self.duplicate(key, cause)

    def unleased(self, key: str, reason: str) -> None:
        """A computation of ``key`` without a lease (the shared tier is down), for
        ``reason``: also a duplicate, since no lease stopped another process."""
        self.miss(key, reason)
        self.duplicate(key, miss_reasons.NO_LEASE)

    def _count(self, counts: dict[tuple[str, str], int], task: str, label: str) -> None:
        pair = (task, label)
        if pair not in counts and len(counts) >= self.max_series:
            pair = (OTHER_TASK, label)
        counts[pair] = counts.get(pair, 0) + 1

    # --- local fates ---

    def left_level(self, key: str, why: str) -> None:
        """A level's ``on_evict(key, reason)``: remember that ``key`` left on its own."""
        self._remember(key, miss_reasons.EVICTED if why == LEVEL_EVICTED else miss_reasons.EXPIRED)

    def failed(self, key: str) -> None:
        """``key``'s computation raised and the error was not cached."""
        self._remember(key, miss_reasons.FAILED)

    def _remember(self, key: str, fate: str) -> None:
        with self._lock:
            fates = self._fates
            fates[key] = fate
            fates.move_to_end(key)
            while len(fates) > self.max_fates:
                fates.popitem(last=False)

    def _take_fate(self, key: str) -> str | None:
        with self._lock:
            return self._fates.pop(key, None)

    # --- why ---

    def explain(self, key: str, history: History | None, ttl: float) -> str:
        """The reason of a miss of ``key`` (see :func:`miss_reasons.classify`); ``ttl`` is
        the value's TTL, the window in which a moved generation explains a miss."""
        local = self._take_fate(key)
        generation = None
        if history is None and local is None and self.generation_moved is not None:
            generation = self.generation_moved(task_of(key), ttl)
        return miss_reasons.classify(history, local, generation)

    # --- figures ---

    def misses(self) -> dict[tuple[str, str], int]:
        """A copy of the counts by (task, reason)."""
        with self._lock:
            return dict(self._misses)

    def duplicates(self) -> dict[tuple[str, str], int]:
        """A copy of the counts by (task, cause)."""
        with self._lock:
            return dict(self._duplicates)

    def duplicate_series(self) -> dict[tuple[str, str], int]:
        """:meth:`duplicates`, plus a zero for every cause of every task that missed (up
        to :attr:`max_series` series in all): a rate or an alert over them then starts
        from a series that exists."""
        with self._lock:
            series = dict(self._duplicates)
            for task in sorted({task for task, _ in self._misses}):
                for cause in miss_reasons.CAUSES:
                    if len(series) >= self.max_series:
                        return series
                    series.setdefault((task, cause), 0)
            return series
