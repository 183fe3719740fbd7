"""Cached tasks on a threads-pool worker: many tasks at once in one process.

Each worker thread has its own reply window (claims sent ahead, write-back
answers read after Celery's result store; see tiercel.core.cache.coordinator),
so concurrent tasks in one process must neither take each other's answers nor
compute a key twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tiercel.core.settings import resolve_settings
from tiercel.workers.launcher import Fleet, FleetSpec

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def threads_queue() -> Iterator[str]:
    """One node running the threads pool (8 threads) on a queue of its own."""
    import tiercel.workers.app  # noqa: F401  (the client publishes through the session's servers)

    queue = f"threads-{uuid.uuid4().hex[:8]}"
    spec = FleetSpec(
        workers=1,
        concurrency=8,
        pool="threads",
        beat=False,
        flower=False,
        loglevel="WARNING",
        grace=10.0,
        extra_worker_args=("-Q", queue),
    )
    with Fleet(resolve_settings(), spec).running():
        yield queue


def test_concurrent_tasks_of_one_threads_worker_answer_each_key_once(
    threads_queue: str, cache_client: redis.Redis
) -> None:
    from tiercel.tasks.examples import counted_square

    run = uuid.uuid4().int % 10**9
    keys = [run * 100 + i for i in range(24)]
    counters = {n: f"test:threads:{n}" for n in keys}
    calls = [n for n in keys for _ in range(3)]  # each key asked three times at once

    def submit(n: int) -> int:
        handle = counted_square.options(queue=threads_queue).submit(n, counters[n], 150)
        return int(handle.get(timeout=60))

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(submit, calls))
    assert answers == [n * n for n in calls]
    assert {n: int(cache_client.get(counters[n]) or 0) for n in keys} == dict.fromkeys(keys, 1)
    # Duplicates delivered to the pool's threads directly (no submit-side coalescing)
    # wait on the lease of the thread computing their key, in the same process.
    n = run * 100 + 99
    duplicates = [
        counted_square.apply_async(
            (n, counters.setdefault(n, f"test:threads:{n}"), 300), queue=threads_queue
        )
        for _ in range(6)
    ]
    assert [r.get(timeout=60) for r in duplicates] == [n * n] * 6
    assert int(cache_client.get(counters[n]) or 0) == 1
