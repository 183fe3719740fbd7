"""Awaiting a :class:`~tiercel.tasks.results.CachedResult`: ``await result.aget(timeout=...)``.

The same wait as :meth:`CachedResult.get`, on the loop's listener instead of
a blocked thread: register for the key's messages, read the value from the
cache (local levels, then the Redis tier through ``redis.asyncio``) each time
something happens, apply the task's freshness policy to what is read,
re-publish a task whose message was lost, and raise Celery's ``TimeoutError``
when ``timeout`` passes. The Celery result backend answers what the cache
cannot (a failure, a value too large to cache, the channel down); its client
is blocking, so those checks run in a worker thread, once per wake-up or
one-second slice, as the blocking wait makes them.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeoutError

from tiercel.core.missing import MISSING
from tiercel.tasks import async_runtime

__all__ = ["aget"]


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


async def aget(result: Any, timeout: float | None = None) -> Any:
    """The value of ``result``; waits up to ``timeout`` seconds (see the module docstring)."""
    if result._value is not MISSING:
        return result._settled(result._value)
    pending = result._async
    runtime = result._runtime
    if runtime is None:
        return await asyncio.to_thread(pending.get, timeout=timeout)
    loop = await async_runtime.current()
    listener = loop.listener
    if not listener.connected:
        return await asyncio.to_thread(pending.get, timeout=timeout)
    spec = result._spec
    cache = loop.cache.with_levels(spec.levels if spec is not None else None)
    deadline = None if timeout is None else time.monotonic() + timeout
    after = (
        runtime.settings.republish_after
        if result._republish_after is None
        else result._republish_after
    )
    next_check = time.monotonic() + after
    with listener.waiter(result.key) as waiter:
        while True:
            if not listener.connected:
                # No notifications while the channel is down: the backend answers.
                return await asyncio.to_thread(pending.get, timeout=_left(deadline))
            found = await cache.lookup(result.key)
            if found is not None and result._usable(found):
                result._value = found.value
                return result._settled(result._value)
            if await asyncio.to_thread(pending.ready):
                return await asyncio.to_thread(pending.get, timeout=_left(deadline))
            if result._resubmit is not None and after > 0 and time.monotonic() >= next_check:
                next_check = time.monotonic() + after
                await asyncio.to_thread(result._republish_if_lost, runtime, after)
            left = _left(deadline)
            if left is not None and left <= 0:
                raise CeleryTimeoutError("The operation timed out.")
            # A slice, not a poll: every outcome wakes the waiter at once.
            if await waiter.wait(1.0 if left is None else min(left, 1.0)) == "f":
                return await asyncio.to_thread(pending.get, timeout=_left(deadline))
