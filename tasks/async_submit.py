"""``await task.asubmit(...)``: submit a cached call from asyncio code.

It decides exactly as :meth:`~tiercel.tasks.cached.CachedTask.submit` does,
through the one decision (:meth:`~tiercel.core.cache.memoize.CachedFunction.serves`):
answer from the local levels (nothing awaited) or the Redis tier (awaited
through ``redis.asyncio``), else join the computation whose in-flight marker
is there, else enqueue one task. The in-flight claim runs the same script on
the loop's client. Publishing a Celery message is blocking kombu I/O, so
enqueueing (and an early refresh's enqueue) runs in a worker thread, off the
loop; the answer is a :class:`~tiercel.tasks.results.CachedResult` whose value
is awaited with :meth:`~tiercel.tasks.results.CachedResult.aget`.

Concurrent submits of one key from one loop share their Redis read and their
in-flight claim (:class:`~tiercel.core.cache.async_shared_reads.SharedReads`):
200 awaiters of a cold key cost one GET and one claim, not 200 of each, and
reach the same decision the separate round trips would have.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from typing import Any

from tiercel.core.cache.async_memoize import derive_key
from tiercel.core.errors import TierUnavailable
from tiercel.tasks import async_runtime
from tiercel.tasks.publishing import NO_OPTIONS, PublishOptions
from tiercel.tasks.results import CachedResult

__all__ = ["asubmit"]


async def asubmit(
    task: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    publish: PublishOptions = NO_OPTIONS,
) -> CachedResult:
    """``task.submit(*args, **kwargs)``, awaited, publishing with ``publish``; see the
    module docstring."""
    from tiercel.tasks.cached import public_source

    started = time.perf_counter()
    loop = await async_runtime.current()
    rt = loop.process
    spec = task.tiercel_spec
    cache = loop.cache.with_levels(spec.levels)
    key = await derive_key(
        spec,
        rt.generations,
        rt.namespace,
        loop.tier,
        task.tiercel_args(args),
        kwargs,
        shared=loop.generation_reads,
    )
    found = cache.lookup_local(key)  # a dict lookup: a local hit awaits nothing
    if found is None:
        # Concurrent submits of one key in this loop share one read while no channel
        # message arrived since it started (tiercel.core.cache.async_shared_reads).
        epoch = loop.listener.epoch
        found = await loop.reads.read(key, epoch, epoch, lambda: cache.lookup_remote(key))
    serve, refresh = spec.serves(found)
    if serve:
        assert found is not None
        if refresh:
            await asyncio.to_thread(task.tiercel_refresh_soon, rt, key, args, kwargs)
        rt.recorder.record(
            spec.name, found.source, time.perf_counter() - started, found.compute_seconds
        )
        return CachedResult.resolved(key, found.value, public_source(found.source), spec)
    task_id = str(uuid.uuid4())
    ttl = publish.inflight_ttl(rt.settings.inflight_ttl)
    epoch = loop.listener.epoch
    # ... and one in-flight claim with its publish: the first claims (and publishes if it
    # won), the others join the task that computes the key.
    winner = await loop.claims.run(
        key,
        epoch,
        epoch,
        lambda: _claim_and_publish(loop, task, key, task_id, ttl, args, kwargs, publish),
    )
    existing = None if winner == task_id else winner
    levels = rt.cache.with_levels(spec.levels)
    if existing is not None:
        joined: CachedResult = task.tiercel_joined(
            rt, levels, key, existing, args, kwargs, publish, started
        )
        return joined
    computing: CachedResult = task.tiercel_computing(
        rt, levels, key, rt.results.of(task_id, task.app), args, kwargs, publish
    )
    return computing


async def _claim_and_publish(
    loop: async_runtime.AsyncRuntime,
    task: Any,
    key: str,
    task_id: str,
    ttl: float,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    publish: PublishOptions,
) -> str:
    """Claim ``key`` for ``task_id`` and publish that task if the claim won; returns the
    id of the task computing ``key``. One unit, shared and shielded: a submitter
    cancelled meanwhile leaves no key claimed for a task never published."""
    try:
        existing = await loop.leases.claim_inflight(key, task_id, ttl)
    except TierUnavailable:
        existing = None  # no coalescing across processes without Redis; the task still runs
    if existing is not None:
        return existing
    # Publishing is blocking kombu I/O: off the loop.
    await asyncio.to_thread(
        functools.partial(
            task.tiercel_enqueue, loop.process, key, task_id, args, kwargs, publish=publish
        )
    )
    return task_id
