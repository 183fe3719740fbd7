"""A cached function without Celery: ``@cached(cache)`` in any Python process.

The key is ``namespace : name : version : digest(generation, arguments)``;
the generation combines the namespace's and the function's counters so that
``invalidate_all()`` (a version bump) and a namespace-wide invalidation are
O(1). :class:`CachedFunction` is also what a Celery cached task computes
through on a worker.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, ParamSpec, TypeVar

from tiercel.core.cache.failures import expired, is_failure, raise_failure
from tiercel.core.cache.failures import record as failure_record
from tiercel.core.cache.freshness import EARLY, FRESH, STALE, BackgroundRefresher, FreshnessPolicy
from tiercel.core.cache.hot_memo import HotMemo, call_key
from tiercel.core.cache.lookup import SOURCE_COMPUTED, Lookup
from tiercel.core.cache.miss_reasons import UNCACHEABLE_ARGUMENT
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.encoding.functions import function_name
from tiercel.core.encoding.keys import KeyBuilder
from tiercel.core.errors import KeyEncodingError
from tiercel.core.missing import MISSING
from tiercel.core.tier.generations import Generations

P = ParamSpec("P")
R = TypeVar("R")

#: Argument types whose equality and hashing never cross types (``1 == True`` and
#: ``1 == 1.0`` are why bool and float are not here), so a tuple of them can key the
#: key memo without ever confusing two calls that have different cache keys.
_HOT_TYPES: frozenset[type] = frozenset({str, int, bytes, type(None)})
#: Calls with at most this many positional arguments have their keys remembered...
_KEY_MEMO_ARGS = 8
#: ...up to this many per function.
_KEY_MEMO_ENTRIES = 4096

#: Generation scope of a whole namespace.
NAMESPACE_SCOPE = "ns"


def function_scope(name: str) -> str:
    """Generation scope of one function (bumped by its ``invalidate_all``)."""
    return f"fn:{name}"


@dataclass
class CachedFunction(Generic[P, R]):
    """A function plus how its results are cached: ttl, tags, version, ignored arguments."""

    fn: Callable[P, R]
    ttl: float | None = None
    tags: tuple[str, ...] = ()
    version: str | None = None
    ignore: tuple[str, ...] = ()
    name: str = ""
    policy: FreshnessPolicy = field(default_factory=FreshnessPolicy)
    #: Names of the local levels this function's values may occupy; None: all of
    #: them, ``()``: none (values live in the Redis tier only).
    levels: tuple[str, ...] | None = None
    #: Failures of these types are cached for ``error_ttl`` seconds and raised again on
    #: a hit (negative caching); any other exception is never cached.
    cache_errors: tuple[type[BaseException], ...] = ()
    error_ttl: float = 30.0
    _builders: dict[str, KeyBuilder] = field(default_factory=dict, init=False, repr=False)
    _keys: dict[tuple[Any, ...], str] = field(default_factory=dict, init=False, repr=False)
    _scope: str = field(default="", init=False, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or function_name(self.fn)
        self._scope = function_scope(self.name)

    def builder(self, namespace: str) -> KeyBuilder:
        """The key builder for ``namespace`` (built once; signature binding is slow)."""
        builder = self._builders.get(namespace)
        if builder is None:
            builder = KeyBuilder(
                self.fn,
                namespace=namespace,
                name=self.name,
                version=self.version,
                ignore=self.ignore,
            )
            self._builders[namespace] = builder
        return builder

    def key(
        self,
        namespace: str,
        generations: Generations,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
    ) -> str:
        """The cache key of one call (raises KeyEncodingError for unencodable arguments).

        Keys of calls with a few positional ``str``/``int``/``bytes``/``None``
        arguments are remembered (bounded), keyed by the generation too, so the
        canonical encoding and digest run once per distinct call.
        """
        generation = (generations.current(NAMESPACE_SCOPE) << 32) | generations.current(self._scope)
        if not kwargs and len(args) <= _KEY_MEMO_ARGS:
            for arg in args:
                if type(arg) not in _HOT_TYPES:
                    break
            else:
                memo_key = (namespace, generation, *args)
                known = self._keys.get(memo_key)
                if known is None:
                    known = self.builder(namespace).key(args, kwargs, generation)
                    if len(self._keys) >= _KEY_MEMO_ENTRIES:
                        self._keys.pop(next(iter(self._keys)), None)  # oldest first
                    self._keys[memo_key] = known
                return known
        return self.builder(namespace).key(args, kwargs, generation)

    def stored_ttl(self, default_ttl: float) -> float:
        """Seconds every tier keeps a value of this function: its ttl (else
        ``default_ttl``, the cache's) plus its stale window."""
        return self.policy.physical_ttl(default_ttl if self.ttl is None else self.ttl)

    def counted_key(
        self,
        cache: MultiLevelCache,
        namespace: str,
        generations: Generations,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
    ) -> str:
        """:meth:`key`, with an argument it cannot encode counted in ``cache``'s miss
        reasons before the error is raised."""
        try:
            return self.key(namespace, generations, args, kwargs)
        except KeyEncodingError:
            cache.misses.miss_of_task(self.name, UNCACHEABLE_ARGUMENT)
            raise

    def call(
        self,
        cache: MultiLevelCache,
        generations: Generations,
        namespace: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        refresher: BackgroundRefresher | None = None,
        inflight_id: str | None = None,
        force_refresh: bool = False,
        key: str | None = None,
        claimed: bool = False,
    ) -> Lookup:
        """Look up or compute one call through ``cache``, refreshing early or stale values
        as :attr:`policy` says (in the background when a ``refresher`` is given).

        ``key`` is the call's cache key when the caller derived it already.
        ``claimed`` says the caller runs for a submitter that found the key missing in
        every tier and marked it in flight under ``inflight_id`` moments ago: the local
        levels are looked in, Redis is not read before the lease is claimed (the claim
        reports a value written since, which is then judged as any other)."""
        if self.levels is not None:
            cache = cache.with_levels(self.levels)
        if key is None:
            key = self.counted_key(cache, namespace, generations, args, kwargs)
        found = self._answer(
            cache, key, args, kwargs, refresher, inflight_id, force_refresh, claimed
        )
        if self.cache_errors and is_failure(found.value):
            raise_failure(found.value, self.cache_errors, key)
        return found

    def _answer(
        self,
        cache: MultiLevelCache,
        key: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        refresher: BackgroundRefresher | None,
        inflight_id: str | None,
        force_refresh: bool,
        claimed: bool = False,
    ) -> Lookup:
        # A refresh asked for (``force_refresh``: an early or stale value was seen) looks
        # too: should another refresh have written a fresh value since, there is nothing
        # left to refresh, and computing again would be a duplicate.
        claimed = claimed and not force_refresh
        found = cache.lookup(key, remote=not claimed)  # claimed: see ``call``
        verdict = FRESH
        if found is not None:
            if self.expired_failure(found.value):
                verdict, refresher = STALE, None  # an old failure: try again, now
            else:
                verdict = self.policy.judge(found.ttl, found.compute_seconds)
            if verdict == FRESH:
                return found  # the hit path: nothing else to decide
        ttl = self.stored_ttl(cache.default_ttl)
        errors = self.cache_errors

        def compute() -> Any:
            try:
                return self.fn(*args, **kwargs)
            except errors as error:  # () catches nothing: only listed types are cached
                return failure_record(error, self.error_ttl)

        if force_refresh:
            refreshed = cache.refresh(
                key, compute=compute, ttl=ttl, tags=self.tags, inflight_id=inflight_id
            )
            if refreshed is not None:
                return refreshed
            found = cache.lookup(key)  # another process is refreshing: serve what there is
            if found is not None:
                return found
        if found is None:
            got = cache.get_or_compute(
                key,
                compute=compute,
                ttl=ttl,
                tags=self.tags,
                inflight_id=inflight_id,
                known_missing=True,
            )
            if claimed and got.source != SOURCE_COMPUTED:
                # Redis was not read: the claim found a value written before this call.
                # Judge it as any value read (read again, from the levels it went to).
                return self._answer(cache, key, args, kwargs, refresher, inflight_id, force_refresh)
            return got
        # The value is due for an early refresh, or stale.
        background = refresher is not None and (
            verdict == EARLY or self.policy.stale_while_revalidate
        )
        if background and refresher is not None:
            refresher.submit(
                key, lambda: cache.refresh(key, compute=compute, ttl=ttl, tags=self.tags)
            )
            return found
        try:
            refreshed = cache.refresh(
                key, compute=compute, ttl=ttl, tags=self.tags, inflight_id=inflight_id
            )
        except Exception:
            if verdict == STALE and not self.policy.stale_if_error:
                raise
            return found  # an early refresh failed (the value is still fresh), or stale-if-error
        # None: another process holds the lease and is refreshing; serve what we have.
        return found if refreshed is None else refreshed

    def expired_failure(self, value: Any) -> bool:
        """True when ``value`` is a failure this function cached that outlived its
        ``error_ttl``: every reader treats it as a miss."""
        return bool(self.cache_errors) and is_failure(value) and expired(value)

    def serves(self, found: Lookup | None) -> tuple[bool, bool]:
        """Whether a submitter may answer from ``found``, and whether it should ask for a
        refresh: the freshness policy's decision, written once for every way in.

        A stale value is served only with ``stale_while_revalidate``; an early or
        stale one that is served is refreshed in the background.
        """
        if found is None or self.expired_failure(found.value):
            return False, False
        verdict = self.policy.judge(found.ttl, found.compute_seconds)
        if verdict == STALE and not self.policy.stale_while_revalidate:
            return False, False
        return True, verdict != FRESH

    def hot_lifetime(self, found: Lookup, generations: Generations) -> float:
        """How long a hot memo may answer ``found`` without asking the cache again: while
        it is fresh (never stale, never a cached failure) and while the generations its
        key was derived from are (see :mod:`tiercel.core.cache.hot_memo`)."""
        if self.cache_errors and is_failure(found.value):
            return 0.0
        lifetime = min(generations.fresh_for(NAMESPACE_SCOPE), generations.fresh_for(self._scope))
        if found.ttl is not None:
            lifetime = min(lifetime, found.ttl - self.policy.stale_ttl)
        return lifetime

    def hot_call(
        self,
        memo: HotMemo,
        cache: MultiLevelCache,
        generations: Generations,
        namespace: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        refresher: BackgroundRefresher | None = None,
    ) -> Lookup:
        """:meth:`call`, then remember the answer in ``memo`` when its level gave it."""
        mark = memo.mark()
        key = self.counted_key(cache, namespace, generations, args, kwargs)
        found = self.call(cache, generations, namespace, args, kwargs, refresher=refresher, key=key)
        memo.install(
            call_key(args, kwargs), key, found, mark, self.hot_lifetime(found, generations)
        )
        return found


class Memoized(Generic[P, R]):
    """The callable :func:`cached` returns: call it like the function.

    In front of the multi-level cache sits a hot memo
    (:mod:`tiercel.core.cache.hot_memo`) keyed by the raw arguments: a call
    the first (memory) level answered before is answered again without
    deriving its key, for as long as that level's copy stands, the value is
    fresh, the generations are and the local levels are trusted.
    """

    def __init__(
        self,
        spec: CachedFunction[P, R],
        cache: MultiLevelCache,
        generations: Generations,
        namespace: str,
        *,
        timer: Callable[[], float] | None = None,
        hot_entries: int = 4096,
        refresher: BackgroundRefresher | None = None,
    ) -> None:
        self.spec = spec
        self.refresher = refresher or _shared_refresher()
        self.cache = cache
        self.generations = generations
        self.namespace = namespace
        self.memo = cache.with_levels(spec.levels).hot_memo(max_entries=hot_entries, clock=timer)
        previous = generations.on_change
        if previous is None:
            generations.on_change = cache.advance_epoch
        elif previous != cache.advance_epoch:

            def both() -> None:
                previous()
                cache.advance_epoch()

            generations.on_change = both
        functools.update_wrapper(self, spec.fn)

    @property
    def hot_hits(self) -> int:
        """Calls the hot memo answered."""
        return self.memo.hits

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        value = self.memo.answer(args, kwargs)
        if value is not MISSING:
            hit: R = value
            return hit
        found = self.spec.hot_call(
            self.memo,
            self.cache,
            self.generations,
            self.namespace,
            args,
            kwargs,
            refresher=self.refresher,
        )
        result: R = found.value
        return result

    def lookup(self, *args: P.args, **kwargs: P.kwargs) -> Lookup:
        """Like calling, but also says where the value came from (never from the memo)."""
        return self.spec.call(
            self.cache, self.generations, self.namespace, args, kwargs, refresher=self.refresher
        )

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Forget one call's value in every tier."""
        self.cache.invalidate(self.spec.key(self.namespace, self.generations, args, kwargs))

    def invalidate_all(self) -> int:
        """Forget every value of this function (a generation bump); returns the generation."""
        return self.generations.bump(function_scope(self.spec.name))


_REFRESHER: list[BackgroundRefresher] = []


def _shared_refresher() -> BackgroundRefresher:
    """One background refresher for every memoized function of this process."""
    if not _REFRESHER:
        _REFRESHER.append(BackgroundRefresher())
    return _REFRESHER[0]


def cached(
    cache: MultiLevelCache,
    *,
    ttl: float | None = None,
    policy: FreshnessPolicy | None = None,
    tags: Iterable[str] = (),
    version: str | None = None,
    ignore: Iterable[str] = (),
    namespace: str = "tiercel",
    generations: Generations | None = None,
    levels: Iterable[str] | None = None,
    cache_errors: Iterable[type[BaseException]] = (),
    error_ttl: float = 30.0,
) -> Callable[[Callable[P, R]], Memoized[P, R]]:
    """Decorate a function so its results are cached in ``cache``.

    Plain functions only: a coroutine function is refused at decoration (its
    call returns a coroutine, which would be cached instead of its result);
    ``tiercel.cached`` caches ``async def`` functions.
    """
    gens = generations or Generations(cache.tier)

    def decorate(fn: Callable[P, R]) -> Memoized[P, R]:
        if inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"tiercel.core.cache.memoize.cached cannot cache the coroutine function "
                f"{function_name(fn)}: it would cache the coroutine object, not its result; "
                "decorate it with tiercel.cached, which awaits async def functions"
            )
        spec = CachedFunction(
            fn,
            ttl=ttl,
            tags=tuple(tags),
            version=version,
            ignore=tuple(ignore),
            policy=policy or FreshnessPolicy(),
            levels=None if levels is None else tuple(levels),
            cache_errors=tuple(cache_errors),
            error_ttl=error_ttl,
        )
        return Memoized(spec, cache, gens, namespace)

    return decorate
