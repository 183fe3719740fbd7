"""Shared fixtures: private redis-server processes and real Celery worker nodes.

Two redis-servers (a ``noeviction`` broker/result server and an
``allkeys-lru`` cache server) start on free loopback ports when the session
is configured, before any test module imports the Celery app, and the
``TIERCEL_*`` variables point at them. Never port 6379, never a fixed port.
A server that cannot start fails the session; nothing here skips.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from tiercel.core.embedded.redis_server import RedisServer

_SERVERS: dict[str, RedisServer] = {}


def pytest_configure(config: pytest.Config) -> None:
    """Start the session's servers and point tiercel at them."""
    if hasattr(config, "workerinput"):
        return  # pragma: no cover - xdist workers inherit the environment
    os.environ.pop("TIERCEL_RUN_DIR", None)
    broker = RedisServer(maxmemory_policy="noeviction").start()
    _SERVERS["broker"] = broker
    cache = RedisServer(maxmemory=256 * 2**20, maxmemory_policy="allkeys-lru").start()
    _SERVERS["cache"] = cache
    os.environ["TIERCEL_BROKER_URL"] = broker.url
    os.environ["TIERCEL_RESULT_BACKEND"] = broker.url
    os.environ["TIERCEL_CACHE_URL"] = cache.url
    # Workers started by the tests run the example tasks and the test-only ones, and
    # import the latter from this checkout.
    os.environ["TIERCEL_TASK_MODULES"] = ",".join(
        ["tiercel.tasks.examples", "tiercel.tasks.examples.postgres", "tests.fleet_tasks"]
    )
    root = str(config.rootpath)
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = root if not path else os.pathsep.join([root, path])
    # A test must never talk to a fleet someone started with `tiercel up`.
    os.environ["TIERCEL_RUN_DIR"] = os.path.join(str(config.rootpath), ".tiercel", "test-run")


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the client runtime (its listener), then the session's servers."""
    import sys

    runtime = sys.modules.get("tiercel.tasks.runtime")
    if runtime is not None:
        runtime.shutdown()
    for server in _SERVERS.values():
        server.stop()
    _SERVERS.clear()


@pytest.fixture(scope="session")
def broker_server() -> RedisServer:
    """The session's broker and result-backend redis-server (noeviction)."""
    return _SERVERS["broker"]


@pytest.fixture(scope="session")
def cache_server() -> RedisServer:
    """The session's cache-tier redis-server (allkeys-lru, bounded)."""
    return _SERVERS["cache"]


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


@pytest.fixture()
def cache_client(cache_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the session cache server that does NOT flush it.

    For tests with running workers: flushing under them would also drop the
    generation counters they remember, which is a different scenario (tested
    on its own) from the one such a test is about.
    """
    client = redis.Redis.from_url(cache_server.url)
    yield client
    client.close()
