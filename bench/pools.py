"""Acquire/release cost of tiercel's ResourcePool against psycopg_pool and redis-py's pool.

Each benchmark times acquire + release of an already-made resource, so it
measures the pool's own bookkeeping (locks, condition waits, checks), not
connection set-up:

* uncontended: one thread, a pool of 2;
* contended: 8 threads sharing a pool of 2 (time per operation from total
  wall time over all threads' operations).

Peers: ``psycopg_pool.ConnectionPool`` (``getconn``/``putconn``, real
connections to the PostgreSQL at ``TIERCEL_TEST_DATABASE_URL`` or
127.0.0.1:5432/test; its rows are left out, with a note, when unreachable) and
redis-py's ``BlockingConnectionPool`` (``get_connection``/``release``, real
connections to a private redis-server). redis-py probes the socket on every
checkout (a ``poll`` syscall) and psycopg_pool inspects the connection's
state on return; tiercel's pool runs its health check only when one is given.
``ratio`` is ``tiercel_us / peer_us``: below 1 means tiercel's pool is cheaper.

Run: ``python -m bench.pools [--quick]``.
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from bench._harness import Row, figure_row, ratio_row
from tiercel.core.pools.resource_pool import ResourcePool

THREADS = 8
POOL_SIZE = 2
#: Our pool may cost at most this many times the library pool's acquire + release.
TARGET = 2.0
PG_CANDIDATES = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)

#: A pair of callables: take one resource, give it back.
Cycle = tuple[Callable[[], Any], Callable[[Any], None]]


def _time_uncontended(cycle: Cycle, ops: int) -> float:
    take, give = cycle
    started = time.perf_counter()
    for _ in range(ops):
        give(take())
    return (time.perf_counter() - started) / ops * 1e6


def _time_contended(cycle: Cycle, ops_per_thread: int, threads: int = THREADS) -> float:
    take, give = cycle
    barrier = threading.Barrier(threads + 1)

    def work() -> None:
        barrier.wait()
        for _ in range(ops_per_thread):
            give(take())

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    return (time.perf_counter() - started) / (ops_per_thread * threads) * 1e6


def _tiercel_cycle() -> tuple[Cycle, Callable[[], None]]:
    pool: ResourcePool[object] = ResourcePool(
        "bench", object, max_size=POOL_SIZE, timeout=30.0, max_idle=None, max_lifetime=None
    )
    pool.fill()
    return (pool.acquire, pool.release), pool.close


def _psycopg_cycle() -> tuple[Cycle, Callable[[], None]] | str:
    try:
        import psycopg
        from psycopg_pool import ConnectionPool
    except ImportError:
        return "psycopg_pool is not installed (pip install 'tiercel[postgres]')"
    given = os.environ.get("TIERCEL_TEST_DATABASE_URL")
    for url in (given,) if given else PG_CANDIDATES:
        try:
            psycopg.connect(url, connect_timeout=3).close()
        except psycopg.Error:
            continue
        pool = ConnectionPool(url, min_size=POOL_SIZE, max_size=POOL_SIZE, timeout=30.0, open=True)
        pool.wait(10)
        return (pool.getconn, pool.putconn), pool.close
    return "PostgreSQL is unreachable"


def _redis_cycle() -> tuple[Cycle, Callable[[], None]]:
    import redis

    from tiercel.core.embedded.redis_server import RedisServer

    server = RedisServer().start()
    pool = redis.BlockingConnectionPool.from_url(
        server.url, max_connections=POOL_SIZE, timeout=30.0
    )
    held = [pool.get_connection() for _ in range(POOL_SIZE)]  # connect both up front
    for connection in held:
        pool.release(connection)

    def close() -> None:
        pool.disconnect()
        server.stop()

    return (pool.get_connection, pool.release), close


def run(quick: bool = False) -> list[Row]:
    """Rows for ``make bench``: medians over repeats, ours and the peer's alternated.

    Each row also carries ``tiercel_us`` and ``peer_us`` (the medians, microseconds
    per acquire + release).
    """
    repeats = 3 if quick else 7
    ops = 2_000 if quick else 20_000
    contended_ops = 300 if quick else 2_500
    modes = (
        ("uncontended", "1 thread, pool of 2", partial(_time_uncontended, ops=ops)),
        (
            "contended",
            f"{THREADS} threads, pool of {POOL_SIZE}",
            partial(_time_contended, ops_per_thread=contended_ops),
        ),
    )
    peers: list[tuple[str, Callable[[], tuple[Cycle, Callable[[], None]] | str]]] = [
        ("psycopg_pool", _psycopg_cycle),
        ("redis-py BlockingConnectionPool", _redis_cycle),
    ]
    rows: list[Row] = []
    for peer, make in peers:
        made = make()
        ours_cycle, close_ours = _tiercel_cycle()
        try:
            if isinstance(made, str):
                ours = [_time_uncontended(ours_cycle, ops) for _ in range(repeats)]
                rows.append(
                    figure_row(
                        f"pool acquire+release uncontended, vs {peer}",
                        statistics.median(ours),
                        "us",
                        note=f"peer skipped: {made}",
                    )
                )
                continue
            theirs_cycle, close_theirs = made
            try:
                for mode, label, measure in modes:
                    measure(ours_cycle)  # warm-up
                    measure(theirs_cycle)
                    ours_us: list[float] = []
                    peer_us: list[float] = []
                    for _ in range(repeats):
                        ours_us.append(measure(ours_cycle))
                        peer_us.append(measure(theirs_cycle))
                    row = ratio_row(
                        f"pool acquire+release {mode} ({label})",
                        ours_us,
                        peer,
                        peer_us,
                        target=TARGET,
                    )
                    row["tiercel_us"] = round(statistics.median(ours_us), 3)
                    row["peer_us"] = round(statistics.median(peer_us), 3)
                    rows.append(row)
            finally:
                close_theirs()
        finally:
            close_ours()
    return rows


def _print_table(rows: list[Row]) -> None:
    header = f"{'benchmark':<54} {'tiercel us':>10} {'peer':<32} {'peer us':>9} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for row in rows:
        if row["ratio"] is None:
            print(
                f"{row['benchmark']:<54} {row['tiercel']:>10.2f} {'-':<32} {'-':>9} "
                f"{'-':>6}  {row['note']}"
            )
            continue
        print(
            f"{row['benchmark']:<54} {row['tiercel_us']:>10.2f} {row['peer']:<32} "
            f"{row['peer_us']:>9.2f} {row['ratio']:>6.2f}"
        )


if __name__ == "__main__":
    started = time.monotonic()
    _print_table(run(quick="--quick" in sys.argv[1:]))
    print(f"({time.monotonic() - started:.1f} s)")
