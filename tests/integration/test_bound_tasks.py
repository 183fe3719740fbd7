"""``@cached_task(bind=True)`` on real worker processes: the task as ``self``.

The session fleet is 2 prefork nodes x 2 processes. ``self`` is the task, as
in Celery, and is left out of the key; ``self.request`` describes the running
task; ``self.retry(...)`` re-publishes it, and the retry leaves no lease or
in-flight marker behind. Computations are counted by the functions themselves
(an INCR in Redis).
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tests.fleet_tasks import bound_square, retrying_square
from tiercel.core.encoding.cache_key import CacheKey
from tiercel.tasks import runtime
from tiercel.workers.launcher import Fleet

pytestmark = pytest.mark.integration


def fresh() -> tuple[int, str]:
    n = uuid.uuid4().int % 10**9
    return n, f"test:bound:{n}"


def count(client: redis.Redis, name: str) -> int:
    return int(client.get(name) or 0)


def no_lease_or_marker(client: redis.Redis, key: str) -> bool:
    return client.exists(CacheKey.of(key).lease, CacheKey.of(key).inflight) == 0


def test_self_is_the_task_and_not_part_of_the_key(fleet: Fleet, cache_client: redis.Redis) -> None:
    n, counter = fresh()
    with ThreadPoolExecutor(8) as pool:
        handles = list(pool.map(lambda _: bound_square.submit(n, counter), range(20)))
    values = [handle.get(timeout=60) for handle in handles]
    assert count(cache_client, counter) == 1
    first = values[0]
    assert values == [first] * 20
    computed = [h for h in handles if h.source == "computed"]
    assert len(computed) == 1
    # self.request was the running task's: the value names the task id that computed it.
    assert first["task_id"] == computed[0].task_id
    assert first["task"] == bound_square.name and first["retries"] == 0
    assert first["square"] == n * n
    # The key is the one of (n, counter) whatever the task object: any `self` gives it.
    rt = runtime.current()
    spec = bound_square.tiercel_spec
    assert rt.key(spec, (object(), n, counter), {}) == handles[0].key
    assert rt.key(spec, (None, n, counter), {}) == handles[0].key
    # Every other way in finds the same value: again, a direct call, cached_call.
    again = bound_square.submit(n, counter)
    assert again.source in ("memory", "redis") and again.get() == first
    assert bound_square(n, counter) == first  # Celery's direct call passes the task as self
    assert bound_square.cached_call(n, counter) == first
    assert bound_square.delay(n, counter).get(timeout=60) == first
    assert count(cache_client, counter) == 1
    assert no_lease_or_marker(cache_client, handles[0].key)
    # Invalidation takes the same arguments as submit, without self.
    bound_square.invalidate(n, counter)
    assert bound_square.submit(n, counter).get(timeout=60)["computation"] == 2


def test_a_direct_call_computes_in_process_with_self(cache_client: redis.Redis) -> None:
    n, counter = fresh()
    value = bound_square(n, counter, 0)
    assert value["square"] == n * n and value["task"] == bound_square.name
    assert value["task_id"] is None  # no request: called directly, as Celery says
    assert bound_square(n, counter, 0) == value
    assert count(cache_client, counter) == 1


def test_retry_leaves_nothing_behind_and_the_retried_run_computes_once(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    n, counter = fresh()
    handle = retrying_square.submit(n, counter, 1)
    assert handle.source == "computed"
    value = handle.get(timeout=60)
    assert value == {"square": n * n, "computation": 1, "retries": 1}
    assert count(cache_client, f"{counter}:attempts") == 2  # the first attempt retried
    assert count(cache_client, counter) == 1
    assert no_lease_or_marker(cache_client, handle.key)
    # The retried run's value is the cached one: nothing computes again.
    again = retrying_square.submit(n, counter, 1)
    assert again.source in ("memory", "redis") and again.get() == value
    assert count(cache_client, f"{counter}:attempts") == 2


def test_duplicates_waiting_on_a_retrying_holder_still_compute_once(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    # .delay() skips submit-side coalescing: 4 messages reach the 4 processes at once, and
    # three of them wait on the lease of the first while it calls self.retry.
    n, counter = fresh()
    results = [retrying_square.delay(n, counter, 1, 500) for _ in range(4)]
    values = [result.get(timeout=60) for result in results]
    assert {v["square"] for v in values} == {n * n}
    assert count(cache_client, counter) == 1
    assert count(cache_client, f"{counter}:attempts") == 2
    key = runtime.current().key(retrying_square.tiercel_spec, (None, n, counter, 1, 500), {})
    assert no_lease_or_marker(cache_client, key)
