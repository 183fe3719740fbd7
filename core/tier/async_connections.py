"""Cache URLs to ``redis.asyncio`` clients, each on its own pool in the loop that uses it.

An asyncio connection belongs to the event loop that opened it, so a pool is
built per loop (see :mod:`tiercel.tasks.async_runtime`), never shared with the
blocking client of :mod:`tiercel.core.tier.connections`. The pool is redis-py's
asyncio ``BlockingConnectionPool``: at most ``max_connections``, and a caller
waits up to ``pool_timeout`` for a free one.

Single servers only for now (``redis://``, ``rediss://``, ``unix://``); a
Cluster or Sentinel URL raises :class:`~tiercel.core.errors.SettingsError`.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tiercel.core.errors import SettingsError
from tiercel.core.tier.connections import driver_options, parse_cache_url

__all__ = ["async_client_from_url"]


def async_client_from_url(
    url: str,
    *,
    max_connections: int = 32,
    socket_timeout: float = 0.5,
    pool_timeout: float | None = None,
    health_check_interval: int = 30,
) -> aioredis.Redis:
    """An asyncio client for the cache tier at ``url``; nothing connects until first use.

    As the blocking client: bytes responses, one attempt per command (the
    tier's breaker decides when to try again), ``socket_timeout`` bounding
    connecting too.
    """
    target = parse_cache_url(url)
    if target.kind != "single":
        raise SettingsError(
            f"the asyncio cache client supports single Redis servers, not {target.kind} "
            f"({target.shown}); call the cached function from a thread, or point "
            "TIERCEL_CACHE_URL at one server"
        )
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": socket_timeout if pool_timeout is None else pool_timeout,
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "health_check_interval": health_check_interval,
        "retry": Retry(NoBackoff(), 0),
        **driver_options(),
    }
    pool = aioredis.BlockingConnectionPool.from_url(url, **options)
    return aioredis.Redis.from_pool(pool)
