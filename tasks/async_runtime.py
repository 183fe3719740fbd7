"""What one event loop owns, on top of its process's runtime.

An asyncio connection belongs to the loop that opened it, so each loop that
awaits a cached function gets an :class:`AsyncRuntime`: a ``redis.asyncio``
client on its own bounded pool, the awaiting tier, lease client and listener
(one subscription per loop), the fleet coordinator and the
:class:`~tiercel.core.cache.async_cache.AsyncCache` over the process's local
levels. Everything else (settings, levels, generations, the breaker, the
process's notifier that evicts local levels) is the process's
:class:`~tiercel.tasks.runtime.Runtime`'s, shared with its threads.

It is built on first use in the running loop (:func:`current`) and closed by
:func:`close` (``await tiercel.aclose()``), e.g. in a web app's lifespan; a
new process runtime (a fork, a restart) gets a new one.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from tiercel.core.cache.async_cache import AsyncCache
from tiercel.core.cache.async_coordinator import AsyncFleetCoordinator
from tiercel.core.cache.async_shared_reads import SharedReads
from tiercel.core.cache.async_shared_waits import SharedWaits
from tiercel.core.cache.lookup import Lookup
from tiercel.core.encoding.prefixes import channel_name
from tiercel.core.tier.async_connections import async_client_from_url
from tiercel.core.tier.async_get_pipeline import pipeline_for_url
from tiercel.core.tier.async_leases import AsyncLeases
from tiercel.core.tier.async_listener import AsyncListener
from tiercel.core.tier.async_tier import AsyncRedisTier
from tiercel.core.tier.connections import keepalive_options
from tiercel.tasks import runtime

__all__ = ["AsyncRuntime", "close", "current"]

#: How long the first use in a loop waits for its subscription (then it keeps trying).
LISTEN_TIMEOUT = 1.0


class AsyncRuntime:
    """One loop's Redis client, tier, leases, listener, coordinator and cache."""

    def __init__(self, process: runtime.Runtime) -> None:
        settings = process.settings
        assert settings.cache_url is not None  # a Runtime has resolved settings
        self.process = process
        self.client = async_client_from_url(
            settings.cache_url,
            max_connections=settings.redis_max_connections,
            socket_timeout=settings.redis_timeout,
        )
        channel = channel_name(settings.namespace)
        self.tier = AsyncRedisTier(
            self.client,
            namespace=settings.namespace,
            breaker=process.tier.breaker,
            gets=pipeline_for_url(
                settings.cache_url,
                socket_timeout=settings.redis_timeout,
                keepalive=keepalive_options(settings.staleness_bound),
            ),
        )
        self.leases = AsyncLeases(self.client, ttl=settings.lease_ttl, channel=channel)
        self.listener = AsyncListener(
            self.client, channel, on_delivery=process.delivered("asyncio")
        )
        self.coordinator = AsyncFleetCoordinator(
            self.tier, self.leases, self.listener, max_wait=settings.task_time_limit
        )
        #: Awaiters of one key share one read of it.
        self.reads: SharedReads[Lookup | None] = SharedReads()
        #: Concurrent first calls of a function share one read of its generation counters.
        self.generation_reads: SharedReads[list[int]] = SharedReads()
        #: Awaiters of one pending computation (key and task) share one wait for it.
        self.waits: SharedWaits[Any] = SharedWaits()
        #: Concurrent submits of one key share one in-flight claim (the winner's task id).
        self.claims: SharedReads[str] = SharedReads()
        encode = process.tier.encode_entry
        self.cache = AsyncCache(
            process.cache,
            self.tier,
            self.coordinator,
            lambda value, ttl, tags, seconds: encode(
                value, ttl=ttl, tags=tags, compute_seconds=seconds
            ),
        )

    async def start(self) -> AsyncRuntime:
        """Subscribe this loop's listener (waiting at most :data:`LISTEN_TIMEOUT`)."""
        await self.listener.start(LISTEN_TIMEOUT)
        return self

    async def close(self) -> None:
        """Stop background refreshes and the listener; close the pool."""
        await self.cache.close()
        await self.listener.stop()
        await self.tier.close()

    def stats(self) -> dict[str, Any]:
        """This loop's cache figures and fleet gauges."""
        return {**self.cache.stats(), "listener": self.coordinator.stats()}


_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncRuntime] = (
    weakref.WeakKeyDictionary()
)


async def current() -> AsyncRuntime:
    """The running loop's runtime, built (and its listener subscribed) on first use."""
    loop = asyncio.get_running_loop()
    process = runtime.existing()
    if process is None:
        # Building the process's runtime waits for its notifier: not on the loop.
        process = await asyncio.to_thread(runtime.current)
    found = _loops.get(loop)
    if found is not None and found.process is process:
        return found
    if found is not None:
        await found.close()  # the process runtime was replaced (fork, restart)
    found = _loops.get(loop)
    if found is None or found.process is not process:
        found = _loops[loop] = AsyncRuntime(process)
    return await found.start()


def existing() -> AsyncRuntime | None:
    """The running loop's runtime if it has one (never builds one)."""
    return _loops.get(asyncio.get_running_loop())


async def close() -> None:
    """Close the running loop's runtime, if any (the process's runtime stays)."""
    found = _loops.pop(asyncio.get_running_loop(), None)
    if found is not None:
        await found.close()
