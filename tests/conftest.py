"""Shared fixtures: private redis-server processes on free loopback ports.

Never port 6379 and never a fixed port. A server that cannot start fails the
test that needs it; nothing here skips.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from core.redis_server import RedisServer


@pytest.fixture(scope="session")
def cache_server() -> Iterator[RedisServer]:
    """A cache-tier redis-server (allkeys-lru, bounded) for the whole session."""
    with RedisServer(maxmemory=256 * 2**20, maxmemory_policy="allkeys-lru") as server:
        yield server


@pytest.fixture()
def cache_url(cache_server: RedisServer) -> Iterator[str]:
    """URL of the session cache server, flushed before each test."""
    client = redis.Redis.from_url(cache_server.url)
    client.flushall()
    client.close()
    yield cache_server.url


@pytest.fixture()
def redis_client(cache_url: str) -> Iterator[redis.Redis]:
    """A plain redis-py client of the (flushed) cache server."""
    client = redis.Redis.from_url(cache_url)
    yield client
    client.close()
