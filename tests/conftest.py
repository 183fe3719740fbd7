"""Shared fixtures: private redis-server processes and real Celery worker nodes.

Two redis-servers (a ``noeviction`` broker/result server and an
``allkeys-lru`` cache server) start on free loopback ports when the session
is configured, before any test module imports the Celery app, and the
``TIERCEL_*`` variables point at them. Never port 6379, never a fixed port.
A server that cannot start fails the session.

Tests that need a service beyond Python (RabbitMQ, a TLS-capable
redis-server, ...) are skipped as not run when it is not configured
(``tests/services.py``), and the run's summary lists each of them by name.
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
    """URL of the session cache server, flushed before each test.

    The flush erases generation counters too; this process then forgets the ones it
    remembered, as a process that never saw them would (otherwise it would write
    them back while the next fleet's fresh workers read none: different keys).
    """
    import sys

    client = redis.Redis.from_url(cache_server.url)
    client.flushall()
    client.close()
    runtime = sys.modules.get("tiercel.tasks.runtime")
    existing = runtime.existing() if runtime is not None else None
    if existing is not None:
        existing.generations.forget()
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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List by name every test not run for want of a service (see tests/services.py)."""
    from tests.services import NOT_RUN, REQUIRE

    by_service: dict[str, list[str]] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        if not isinstance(longrepr, tuple) or len(longrepr) != 3:
            continue
        reason = str(longrepr[2]).removeprefix("Skipped: ")
        if reason.startswith(NOT_RUN):
            service = reason.removeprefix(NOT_RUN).split(": ", 1)[0]
            by_service.setdefault(service, []).append(report.nodeid)
    if not by_service:
        return
    count = sum(len(names) for names in by_service.values())
    terminalreporter.section(f"{count} tests not run: a service is not configured")
    for service, names in sorted(by_service.items()):
        terminalreporter.write_line(f"{service}: {len(names)}")
        for name in names:
            terminalreporter.write_line(f"  {name}")
    terminalreporter.write_line(f"(CI sets {REQUIRE}=1, where each of these fails instead)")
