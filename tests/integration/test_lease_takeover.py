"""kill -9 of the process holding a lease, mid-compute, on real prefork workers.

The celery-once failure (a lock left behind after a kill) must not happen:
the dead holder's lease expires, exactly one waiter takes it over, and the
killed task is redelivered (acks_late + reject_on_worker_lost) and answered.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
import redis

from tests.integration.fleet import worker_fleet
from tiercel.core.encoding.cache_key import CacheKey
from tiercel.tasks.examples import counted_square


def test_killed_lease_holder_is_taken_over_by_exactly_one_waiter(
    monkeypatch: pytest.MonkeyPatch, cache_client: redis.Redis
) -> None:
    monkeypatch.setenv("TIERCEL_LEASE_TTL", "2")
    from tiercel.tasks import runtime

    n = uuid.uuid4().int % 10**9
    counter = f"test:count:{n}"
    with worker_fleet(nodes=2, concurrency=2):
        key = runtime.current().key(counted_square.tiercel_spec, (n, counter, 4000), {})
        first = counted_square.delay(n, counter, 4000)
        deadline = time.monotonic() + 30
        lease_value = None
        while time.monotonic() < deadline:
            lease_value = cache_client.get(CacheKey.of(key).lease)
            if lease_value is not None:
                break
            time.sleep(0.02)
        assert lease_value is not None, "no worker took the lease"
        waiters = [counted_square.delay(n, counter, 4000) for _ in range(3)]
        time.sleep(0.5)  # the duplicates are waiting on the lease in other processes
        holder_pid = int(lease_value.decode().split(":")[2])
        assert holder_pid != os.getpid()
        os.kill(holder_pid, signal.SIGKILL)
        killed_at = time.monotonic()

        values = [result.get(timeout=60) for result in (first, *waiters)]
        elapsed = time.monotonic() - killed_at
    assert values == [n * n] * 4
    assert int(cache_client.get(counter) or 0) == 2, "the killed computation plus one takeover"
    assert elapsed < 20, f"took {elapsed:.1f}s after the kill"
    assert cache_client.get(CacheKey.of(key).lease) is None, "a lease was left behind"


def test_hard_time_limit_frees_the_lease_at_once(fleet: object, cache_client: redis.Redis) -> None:
    # celery-singleton's issue 40: a lock left behind after a hard time limit. Here the
    # worker's main process frees the lease as soon as it kills the child, so a waiter
    # takes over at once instead of after the lease TTL (30 s in this fleet).
    from celery.exceptions import TimeLimitExceeded

    from tests.fleet_tasks import stubborn
    from tiercel.tasks import runtime

    name = uuid.uuid4().hex
    counter = f"test:count:{name}"
    key = runtime.current().key(stubborn.tiercel_spec, (name, counter, 3.0), {})
    first = stubborn.apply_async((name, counter, 3.0), soft_time_limit=0.5, time_limit=1)
    deadline = time.monotonic() + 30
    while cache_client.get(CacheKey.of(key).lease) is None:
        assert time.monotonic() < deadline, "no worker took the lease"
        time.sleep(0.01)
    waiting = stubborn.delay(name, counter, 3.0)
    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        first.get(timeout=30)
    assert waiting.get(timeout=30) == 2  # the waiter took over and computed
    took = time.monotonic() - started
    assert took < 10, f"the waiter waited {took:.1f}s: the lease was not freed"
