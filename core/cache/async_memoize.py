"""A cached ``async def``: one call's key, freshness and value, awaited where it must be.

:class:`AsyncMemoized` is :class:`~tiercel.core.cache.memoize.Memoized` for a
coroutine function, over an :class:`~tiercel.core.cache.async_cache.AsyncCache`.
The key is the same as the blocking side's (a
:class:`~tiercel.core.cache.memoize.CachedFunction` derives it), so a value
cached by either is found by the other. Generation counters are read through
the awaiting tier when the process's remembered ones are older than their
``max_age``, so deriving a key never blocks the loop on Redis; a local hit
awaits nothing at all.

Freshness as the blocking side: an early value is served and refreshed in a
task of the loop, a stale one is served while refreshing only with
``stale_while_revalidate`` (else recomputed now).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, ParamSpec, TypeVar

from tiercel.core.cache.async_cache import AsyncCache
from tiercel.core.cache.async_shared_reads import SharedReads
from tiercel.core.cache.failures import is_failure, raise_failure
from tiercel.core.cache.failures import record as failure_record
from tiercel.core.cache.freshness import EARLY, FRESH, STALE
from tiercel.core.cache.lookup import Lookup
from tiercel.core.cache.memoize import NAMESPACE_SCOPE, CachedFunction, function_scope
from tiercel.core.errors import TierUnavailable
from tiercel.core.tier.async_tier import AsyncRedisTier
from tiercel.core.tier.generations import Generations

__all__ = ["AsyncMemoized", "derive_key"]

P = ParamSpec("P")
R = TypeVar("R")


class AsyncMemoized(Generic[P, R]):
    """``await memoized(*args)`` looks up or computes one call of ``spec.fn``."""

    def __init__(
        self,
        spec: CachedFunction[P, Awaitable[R]],
        cache: AsyncCache,
        generations: Generations,
        namespace: str,
        tier: AsyncRedisTier,
        generation_reads: SharedReads[list[int]],
    ) -> None:
        self.spec = spec
        self.cache = cache
        self.generations = generations
        self.namespace = namespace
        self.tier = tier
        #: The loop's generation reads in flight, shared by its concurrent first calls.
        self.generation_reads = generation_reads
        functools.update_wrapper(self, spec.fn)

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        found = await self.lookup(*args, **kwargs)
        value: R = found.value
        return value

    async def key(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        """The cache key of one call (KeyEncodingError for unencodable arguments)."""
        return await derive_key(
            self.spec,
            self.generations,
            self.namespace,
            self.tier,
            args,
            kwargs,
            shared=self.generation_reads,
        )

    async def lookup(self, *args: P.args, **kwargs: P.kwargs) -> Lookup:
        """Like awaiting the call, but also says where the value came from."""
        spec = self.spec
        cache = self.cache.with_levels(spec.levels)
        key = await self.key(args, kwargs)
        found = cache.lookup_local(key)  # a dict lookup: nothing awaited on a local hit
        if found is None:
            found = await cache.lookup_remote(key)
        compute = self._compute(args, kwargs)
        ttl = spec.stored_ttl(cache.default_ttl)
        if found is None:
            found = await cache.get_or_compute(
                key, compute=compute, ttl=ttl, tags=spec.tags, known_missing=True
            )
        else:
            if spec.expired_failure(found.value):
                verdict, background = STALE, False  # an old failure: try again, now
            else:
                verdict = spec.policy.judge(found.ttl, found.compute_seconds)
                background = verdict == EARLY or spec.policy.stale_while_revalidate
            if verdict != FRESH and background:
                cache.refresh_soon(key, compute=compute, ttl=ttl, tags=spec.tags)
            elif verdict != FRESH:
                try:
                    refreshed = await cache.refresh(key, compute=compute, ttl=ttl, tags=spec.tags)
                except Exception:
                    if verdict == STALE and not spec.policy.stale_if_error:
                        raise
                    refreshed = None  # stale-if-error: serve what there is
                # None: another process holds the lease and is refreshing; serve ours.
                found = found if refreshed is None else refreshed
        if spec.cache_errors and is_failure(found.value):
            raise_failure(found.value, spec.cache_errors, key)
        return found

    def _compute(
        self, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> Callable[[], Awaitable[Any]]:
        fn = self.spec.fn
        errors = self.spec.cache_errors
        error_ttl = self.spec.error_ttl

        async def compute() -> Any:
            try:
                return await fn(*args, **kwargs)
            except errors as error:  # () catches nothing: only listed types are cached
                return failure_record(error, error_ttl)

        return compute

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Forget one call's value in every tier and every process."""
        await self.cache.invalidate(await self.key(args, kwargs))

    async def invalidate_all(self) -> int:
        """Forget every value of this function everywhere (a generation bump); returns
        the new generation."""
        scope = function_scope(self.spec.name)
        generation = await self.cache.invalidate_all(scope)
        self.generations.accept(scope, generation)  # moves this process's keys at once
        return generation

    async def invalidate_tag(self, tag: str) -> int:
        """Forget every value tagged ``tag``, of any function; returns Redis keys removed."""
        return await self.cache.invalidate_tag(tag)


async def derive_key(
    spec: CachedFunction[Any, Any],
    generations: Generations,
    namespace: str,
    tier: AsyncRedisTier,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    shared: SharedReads[list[int]],
) -> str:
    """The cache key of one call of ``spec``, as :meth:`CachedFunction.key` derives it,
    with generation counters older than their ``max_age`` read through ``tier``
    (reads in flight ``shared`` by the loop's concurrent callers)."""
    scopes = tuple(
        scope
        for scope in (NAMESPACE_SCOPE, function_scope(spec.name))
        if generations.fresh(scope) is None
    )
    if scopes:
        await _read_generations(generations, tier, scopes, shared)
    return spec.key(namespace, generations, args, kwargs)


async def _read_generations(
    generations: Generations,
    tier: AsyncRedisTier,
    scopes: tuple[str, ...],
    shared: SharedReads[list[int]],
) -> None:
    """Read ``scopes``' counters in one round trip, shared with every caller that
    arrives while it runs: 200 concurrent first calls of a function cost one read,
    not 200 (nor 200 new connections). The shared answer is at most one round trip
    older than a read of their own, and generations are remembered for ``max_age``
    seconds anyway."""
    try:
        stored = await shared.read("\n".join(scopes), 0, 0, lambda: tier.generations(scopes))
    except TierUnavailable:
        for scope in scopes:
            generations.unreadable(scope)
        return
    for scope, value in zip(scopes, stored, strict=True):
        await _accept(generations, tier, scope, value)


async def _accept(generations: Generations, tier: AsyncRedisTier, scope: str, stored: int) -> None:
    used = generations.accept(scope, stored)
    if used > stored:
        # The store lost the counter: write back the one this process knows.
        with contextlib.suppress(TierUnavailable):
            await tier.restore_generation(scope, used)
