"""``@cached_task``: a Celery task whose results are computed once across the fleet.

The decorated function is a normal Celery task (``.delay()``,
``.apply_async()``, Flower's apply API all work) whose body looks in the
worker's local levels and the Redis tier before computing, and writes the
result through every tier. On top of that it offers ``submit()``, which
answers from the cache without touching the broker when it can.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

from celery import Task, shared_task

from core.memoize import CachedFunction
from tasks import runtime
from tasks.registry import register
from tasks.results import CachedResult

# Cached tasks are idempotent by construction: redeliver rather than lose them.
_TASK_DEFAULTS: dict[str, Any] = {"acks_late": True, "reject_on_worker_lost": True}


class CachedTask(Task):  # type: ignore[misc]
    """Base class of every cached task; ``tiercel_spec`` says how it caches."""

    tiercel_spec: CachedFunction[Any, Any]

    def submit(self, *args: Any, **kwargs: Any) -> CachedResult:
        """Answer from the cache when possible; otherwise enqueue one task."""
        rt = runtime.current()
        key = rt.key(self.tiercel_spec, args, kwargs)
        found = rt.cache.lookup(key)
        if found is not None:
            return CachedResult.resolved(key, found.value, _public_source(found.source))
        async_result = self.apply_async(args, kwargs)
        return CachedResult.pending(key, async_result, "computed")

    def submit_many(self, calls: Iterable[Any]) -> list[CachedResult]:
        """Submit many calls: one MGET for all of them, one task per distinct miss.

        Each item is a tuple of positional arguments, or a ``(args, kwargs)`` pair
        whose second element is a dict.
        """
        rt = runtime.current()
        normalised = [_split_call(call) for call in calls]
        keys = [rt.key(self.tiercel_spec, args, kwargs) for args, kwargs in normalised]
        hits = rt.cache.get_many(keys)
        results: list[CachedResult] = []
        enqueued: dict[str, CachedResult] = {}
        for key, (args, kwargs) in zip(keys, normalised, strict=True):
            if key in hits:
                results.append(CachedResult.resolved(key, hits[key], "redis"))
            elif key in enqueued:
                results.append(CachedResult.pending(key, enqueued[key]._async, "joined"))  # type: ignore[arg-type]
            else:
                enqueued[key] = CachedResult.pending(key, self.apply_async(args, kwargs),
                                                     "computed")
                results.append(enqueued[key])
        return results

    def cached_call(self, *args: Any, **kwargs: Any) -> Any:
        """Compute in this process through local levels and the Redis tier."""
        return runtime.current().call(self.tiercel_spec, args, kwargs).value

    def invalidate(self, *args: Any, **kwargs: Any) -> None:
        """Forget the value of one call everywhere."""
        rt = runtime.current()
        rt.cache.invalidate(rt.key(self.tiercel_spec, args, kwargs))

    def invalidate_tag(self, tag: str) -> int:
        """Forget every value carrying ``tag``; returns the Redis keys removed."""
        return runtime.current().cache.invalidate_tag(tag)

    def invalidate_all(self) -> int:
        """Forget every value of this task (a version bump); returns the new generation."""
        from core.memoize import function_scope

        return runtime.current().generations.bump(function_scope(self.tiercel_spec.name))


def _public_source(source: str) -> str:
    if source in ("redis", "computed", "joined"):
        return source
    return "memory"  # any local level


def _split_call(call: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if (isinstance(call, tuple) and len(call) == 2 and isinstance(call[0], (tuple, list))
            and isinstance(call[1], dict)):
        return tuple(call[0]), dict(call[1])
    if isinstance(call, (tuple, list)):
        return tuple(call), {}
    return (call,), {}


def cached_task(
    fn: Callable[..., Any] | None = None,
    *,
    ttl: float | None = None,
    tags: Iterable[str] = (),
    version: str | None = None,
    ignore: Iterable[str] = (),
    name: str | None = None,
    **celery_options: Any,
) -> Any:
    """Register ``fn`` as a cached Celery task (usable bare or with options).

    ``ttl`` seconds in every tier (default: the ``TIERCEL_DEFAULT_TTL``);
    ``tags`` for ``invalidate_tag``; ``version`` overrides the digest of the
    function's code; ``ignore`` names arguments left out of the key. Other
    keyword arguments go to Celery's task decorator.
    """

    def decorate(func: Callable[..., Any]) -> Any:
        task_name = name or f"{func.__module__}.{func.__name__}"
        spec = CachedFunction(func, ttl=ttl, tags=tuple(tags), version=version,
                              ignore=tuple(ignore), name=task_name)

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            return runtime.current().call(spec, args, kwargs).value

        options = {**_TASK_DEFAULTS, **celery_options}
        task = shared_task(name=task_name, base=CachedTask, tiercel_spec=spec, **options)(run)
        register(task_name, task)
        return task

    return decorate(fn) if fn is not None else decorate
