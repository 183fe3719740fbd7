"""``tiercel.cached`` on an ``async def``: a cached coroutine function in plain asyncio code.

Awaiting the decorated function answers from this process's local levels
without awaiting anything, else from the Redis tier through ``redis.asyncio``,
else computes: once per event loop however many tasks await the key, and once
per fleet under the same fenced lease a worker takes (a blocking caller of
the same function elsewhere joins it too). The loop's Redis client and
listener are built on first use in that loop (:mod:`tiercel.tasks.async_runtime`);
``await tiercel.aclose()`` closes them.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable
from typing import Any, Generic, ParamSpec, TypeVar

from tiercel.core.cache.async_memoize import AsyncMemoized
from tiercel.core.cache.lookup import Lookup
from tiercel.core.cache.memoize import CachedFunction
from tiercel.tasks import async_runtime

__all__ = ["AsyncCachedCallable"]

P = ParamSpec("P")
R = TypeVar("R")


class AsyncCachedCallable(Generic[P, R]):
    """What ``tiercel.cached`` returns for an ``async def``: await it like the function."""

    def __init__(self, spec: CachedFunction[P, Awaitable[R]]) -> None:
        self.spec = spec
        self._bound: tuple[async_runtime.AsyncRuntime, AsyncMemoized[P, R]] | None = None
        functools.update_wrapper(self, spec.fn)

    async def _memoized(self) -> AsyncMemoized[P, R]:
        loop_runtime = await async_runtime.current()
        bound = self._bound
        if bound is None or bound[0] is not loop_runtime:  # first await, another loop
            process = loop_runtime.process
            memo = AsyncMemoized(
                self.spec,
                loop_runtime.cache,
                process.generations,
                process.namespace,
                loop_runtime.tier,
                loop_runtime.generation_reads,
            )
            bound = self._bound = (loop_runtime, memo)
        return bound[1]

    async def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return await (await self._memoized())(*args, **kwargs)

    async def lookup(self, *args: P.args, **kwargs: P.kwargs) -> Lookup:
        """Like awaiting the call, but returns the value with where it came from."""
        return await (await self._memoized()).lookup(*args, **kwargs)

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Forget one call's value in every tier and every process."""
        await (await self._memoized()).invalidate(*args, **kwargs)

    async def invalidate_tag(self, tag: str) -> int:
        """Forget every value tagged ``tag``; returns the Redis keys removed."""
        return await (await self._memoized()).invalidate_tag(tag)

    async def invalidate_all(self) -> int:
        """Forget every value of this function everywhere (a version bump)."""
        return await (await self._memoized()).invalidate_all()

    async def stats(self) -> dict[str, Any]:
        """This loop's cache figures: levels, Redis, computed, joined, fleet."""
        return (await async_runtime.current()).stats()
