"""``tiercel.cached``: a cached function in any Python process, on this process's runtime.

No Celery is involved: calls are answered from this process's local levels and
the Redis tier (settings from ``TIERCEL_*`` variables or a running ``tiercel
up``), and a miss computes here under the same fleet-wide fenced lease a worker
takes, so concurrent callers in other processes compute a key once. The runtime
is built on the first call, not at decoration, and anew after a fork.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine, Iterable
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Protocol, TypeVar, overload

from tiercel.core.cache.freshness import FreshnessPolicy
from tiercel.core.cache.memoize import CachedFunction, Memoized
from tiercel.core.encoding.functions import function_name
from tiercel.core.missing import MISSING
from tiercel.tasks import runtime

if TYPE_CHECKING:
    from tiercel.tasks.async_cached_function import AsyncCachedCallable

P = ParamSpec("P")
R = TypeVar("R")
_RUNTIME = runtime.RUNTIME


def _no_answer(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return MISSING


class CachedCallable(Generic[P, R]):
    """What :func:`cached` returns: call it like the function."""

    def __init__(self, spec: CachedFunction[P, R]) -> None:
        self.spec = spec
        self._bound: tuple[runtime.Runtime, Memoized[P, R]] | None = None
        #: The runtime the hot memo was made for, and the memo's answer (held here
        #: rather than reached through ``_bound`` on every call: this is the hit path).
        self._owner: object = None
        self._answer: Callable[[tuple[Any, ...], dict[str, Any]], Any] = _no_answer
        functools.update_wrapper(self, spec.fn)

    def _memoized(self) -> tuple[runtime.Runtime, Memoized[P, R]]:
        rt = runtime.current()
        bound = self._bound
        if bound is None or bound[0] is not rt:  # first call, a fork, or a restart
            memo = Memoized(
                self.spec, rt.cache, rt.generations, rt.namespace, refresher=rt.refresher
            )
            bound = self._bound = (rt, memo)
            self._answer = memo.memo.answer
            self._owner = rt
        return bound

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if self._owner is _RUNTIME.value:
            # The hot memo first, on the runtime it was made for (a fork or a restart
            # makes a new one; before the first call no runtime matches None's owner).
            value = self._answer(args, kwargs)
            if value is not MISSING:
                hit: R = value
                return hit
        return self._memoized()[1](*args, **kwargs)

    def lookup(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Like calling, but returns the value with where it came from (``.source``)."""
        return self._memoized()[1].lookup(*args, **kwargs)

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Forget one call's value in every tier and every process."""
        rt = self._memoized()[0]
        rt.cache.invalidate(rt.key(self.spec, args, kwargs))

    def invalidate_all(self) -> int:
        """Forget every value of this function everywhere (a version bump)."""
        return self._memoized()[0].invalidate_all(self.spec)


class CachedDecorator(Protocol):
    """What :func:`cached` returns: an ``async def`` becomes an
    :class:`~tiercel.tasks.async_cached_function.AsyncCachedCallable`, any other
    function a :class:`CachedCallable`."""

    # A coroutine function is also a Callable[P, R]: the first overload that fits wins.
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> AsyncCachedCallable[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> CachedCallable[P, R]: ...


def cached(
    ttl: float | None = None,
    *,
    tags: Iterable[str] = (),
    version: str | None = None,
    ignore: Iterable[str] = (),
    name: str | None = None,
    levels: Iterable[str] | None = None,
    stale_ttl: float = 0.0,
) -> CachedDecorator:
    """Cache a function's results in this process's levels and the shared Redis tier.

    ``ttl`` is in seconds (None: the ``TIERCEL_DEFAULT_TTL``); ``version``
    defaults to a digest of the function's code, so a changed function never
    answers from its old values; ``ignore`` names arguments left out of the key.

    An ``async def`` is awaited (``await f(x)``): its result is cached through
    the same levels and Redis tier with ``redis.asyncio``, computed once per
    event loop and once per fleet (see :mod:`tiercel.tasks.async_cached_function`).
    """

    def decorate(fn: Callable[..., Any]) -> Any:
        spec: CachedFunction[..., Any] = CachedFunction(
            fn,
            ttl=ttl,
            tags=tuple(tags),
            version=version,
            ignore=tuple(ignore),
            name=name or function_name(fn),
            policy=FreshnessPolicy(stale_ttl=stale_ttl),
            levels=None if levels is None else tuple(levels),
        )
        if inspect.iscoroutinefunction(fn):
            # Awaited: the coroutine's result is cached, never the coroutine object.
            from tiercel.tasks.async_cached_function import AsyncCachedCallable

            return AsyncCachedCallable(spec)
        return CachedCallable(spec)

    decorator: CachedDecorator = decorate
    return decorator
