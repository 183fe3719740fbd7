"""ResourcePool, ObjectPool, WaitHistogram and the Redis pool adapter."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import pytest

from tiercel.core.errors import ForeignResource, PoolClosed, PoolError, PoolTimeout
from tiercel.core.pools.object_pool import ObjectPool, ObjectPools
from tiercel.core.pools.redis_pool import RedisPool
from tiercel.core.pools.resource_pool import ResourcePool
from tiercel.core.pools.wait_histogram import WAIT_BUCKETS_US, WaitHistogram


class Resource:
    """A fake resource that knows whether it is in use and whether it was closed."""

    ids = itertools.count(1)

    def __init__(self) -> None:
        self.id = next(self.ids)
        self.users = 0
        self.closed = False
        self.healthy = True

    def close(self) -> None:
        self.closed = True


class FakeTimer:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_pool(**options: Any) -> ResourcePool[Resource]:
    return ResourcePool("test", Resource, **{"max_size": 2, "timeout": 1.0, **options})


# -- basics ------------------------------------------------------------------------------


def test_acquire_release_reuses_the_same_resource() -> None:
    pool = make_pool()
    first = pool.acquire()
    pool.release(first)
    second = pool.acquire()
    assert second is first
    pool.release(second)
    snap = pool.snapshot()
    assert snap["created"] == 1 and snap["acquires"] == 2 and snap["size"] == 1
    assert snap["in_use"] == 0 and snap["idle"] == 1


def test_lease_returns_on_success_and_discards_on_error() -> None:
    pool = make_pool()
    with pool.lease() as resource:
        kept = resource
    assert pool.idle == 1 and not kept.closed
    with pytest.raises(RuntimeError), pool.lease() as resource:
        assert resource is kept
        raise RuntimeError("half-used")
    assert kept.closed, "a resource whose block raised is discarded, not returned"
    assert pool.size == 0 and pool.snapshot()["broken"] == 1
    with pool.lease() as resource:
        assert resource is not kept


def test_discard_on_can_keep_resources_on_expected_errors() -> None:
    pool = make_pool(discard_on=(OSError,))
    with pytest.raises(KeyError), pool.lease() as resource:
        raise KeyError("user error, resource is fine")
    assert pool.idle == 1 and not resource.closed


def test_validation_names_the_pool() -> None:
    with pytest.raises(ValueError, match=r"'bad'.*max_size"):
        ResourcePool("bad", Resource, max_size=0)
    with pytest.raises(ValueError, match=r"'bad'.*min_size"):
        ResourcePool("bad", Resource, min_size=3, max_size=2)
    with pytest.raises(ValueError, match="max_lifetime"):
        ResourcePool("bad", Resource, max_lifetime=0)


# -- bounds and blocking -----------------------------------------------------------------


def test_timeout_names_pool_and_size() -> None:
    pool = make_pool(max_size=1)
    held = pool.acquire()
    started = time.monotonic()
    with pytest.raises(PoolTimeout, match=r"pool 'test' \(max_size=1, in use=1\).*0.2s"):
        pool.acquire(timeout=0.2)
    assert 0.19 <= time.monotonic() - started < 1.0
    assert isinstance(PoolTimeout("x"), TimeoutError)
    assert pool.snapshot()["timeouts"] == 1
    pool.release(held)


def test_zero_timeout_never_waits() -> None:
    pool = make_pool(max_size=1)
    held = pool.acquire()
    started = time.monotonic()
    with pytest.raises(PoolTimeout):
        pool.acquire(timeout=0)
    assert time.monotonic() - started < 0.05
    pool.release(held)


def test_a_waiter_wakes_as_soon_as_a_resource_is_released() -> None:
    pool = make_pool(max_size=1)
    held = pool.acquire()
    got: list[float] = []

    def waiter() -> None:
        resource = pool.acquire(timeout=5)
        got.append(time.monotonic())
        pool.release(resource)

    thread = threading.Thread(target=waiter)
    thread.start()
    deadline = time.monotonic() + 2
    while pool.snapshot()["waiters"] == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert pool.snapshot()["waiters"] == 1
    released_at = time.monotonic()
    pool.release(held)
    thread.join(5)
    # Woken by the condition variable, not by a polling interval.
    assert got and got[0] - released_at < 0.05
    assert pool.snapshot()["wait"]["count"] == 2


@pytest.mark.parametrize(("threads", "size"), [(16, 2), (32, 3), (8, 1)])
def test_many_threads_never_exceed_the_bound_or_share_a_resource(threads: int, size: int) -> None:
    pool = make_pool(max_size=size, timeout=10.0)
    lock = threading.Lock()
    out = 0
    peak = 0
    errors: list[str] = []
    seen: set[int] = set()

    def work() -> None:
        nonlocal out, peak
        for _ in range(50):
            with pool.lease() as resource:
                with lock:
                    if resource.users:
                        errors.append(f"resource {resource.id} handed to two users")
                    resource.users += 1
                    out += 1
                    peak = max(peak, out)
                    seen.add(resource.id)
                time.sleep(0.0002)
                with lock:
                    resource.users -= 1
                    out -= 1

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not errors
    assert peak <= size
    assert len(seen) <= size
    snap = pool.snapshot()
    assert snap["created"] <= size and snap["size"] <= size
    assert snap["acquires"] == threads * 50 and snap["in_use"] == 0 and snap["waiters"] == 0
    assert snap["timeouts"] == 0
    assert sum(snap["wait"]["counts"]) == threads * 50


def test_contended_timeouts_leave_the_pool_consistent() -> None:
    pool = make_pool(max_size=2)
    outcomes: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        try:
            with pool.lease(timeout=0.05):
                time.sleep(0.2)
            outcome = "ok"
        except PoolTimeout:
            outcome = "timeout"
        with lock:
            outcomes.append(outcome)

    workers = [threading.Thread(target=work) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    assert outcomes.count("ok") == 2 and outcomes.count("timeout") == 6
    snap = pool.snapshot()
    assert snap["timeouts"] == 6 and snap["in_use"] == 0 and snap["size"] == 2


# -- bad input ---------------------------------------------------------------------------


def test_factory_error_propagates_and_frees_its_slot() -> None:
    calls = 0

    def flaky() -> Resource:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise ConnectionRefusedError("backend down")
        return Resource()

    pool = ResourcePool("flaky", flaky, max_size=1, timeout=0.5)
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            pool.acquire()
    assert pool.size == 0, "a failed factory call must not hold a slot"
    resource = pool.acquire()
    assert isinstance(resource, Resource)
    snap = pool.snapshot()
    assert snap["create_errors"] == 2 and snap["created"] == 1
    pool.release(resource)


def test_a_failed_factory_call_wakes_a_waiter() -> None:
    gate = threading.Event()
    calls = 0

    def slow_fail_then_ok() -> Resource:
        nonlocal calls
        calls += 1
        if calls == 1:
            gate.wait(5)
            raise OSError("first connect fails")
        return Resource()

    pool = ResourcePool("wake", slow_fail_then_ok, max_size=1, timeout=5.0)
    results: list[Any] = []

    def first() -> None:
        try:
            pool.acquire()
        except OSError as exc:
            results.append(exc)

    def second() -> None:
        results.append(pool.acquire())

    one = threading.Thread(target=first)
    one.start()
    while pool.size == 0:
        time.sleep(0.001)
    two = threading.Thread(target=second)
    two.start()
    time.sleep(0.05)
    gate.set()
    one.join(5)
    two.join(5)
    assert any(isinstance(r, OSError) for r in results)
    assert any(isinstance(r, Resource) for r in results)


def test_releasing_a_foreign_or_released_object_is_an_error() -> None:
    pool = make_pool()
    with pytest.raises(ForeignResource, match="'test' did not hand out"):
        pool.release(Resource())
    resource = pool.acquire()
    pool.release(resource)
    with pytest.raises(ForeignResource):
        pool.release(resource)
    assert issubclass(ForeignResource, PoolError)
    assert pool.size == 1 and pool.idle == 1


def test_use_after_close_is_an_error_and_lent_resources_close_on_release() -> None:
    pool = make_pool()
    idle = pool.acquire()
    lent = pool.acquire()
    pool.release(idle)
    pool.close()
    assert idle.closed and not lent.closed
    with pytest.raises(PoolClosed, match="'test' is closed"):
        pool.acquire()
    pool.release(lent)
    assert lent.closed and pool.size == 0
    pool.close()  # idempotent


def test_close_wakes_waiters_with_pool_closed() -> None:
    pool = make_pool(max_size=1, timeout=10.0)
    held = pool.acquire()
    errors: list[BaseException] = []

    def waiter() -> None:
        try:
            pool.acquire()
        except PoolClosed as exc:
            errors.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    while pool.snapshot()["waiters"] == 0:
        time.sleep(0.001)
    pool.close()
    thread.join(2)
    assert len(errors) == 1
    pool.release(held)


# -- health, idle and lifetime -----------------------------------------------------------


def test_health_check_on_checkout_discards_broken_resources() -> None:
    pool = make_pool(check=lambda r: r.healthy)
    first = pool.acquire()
    pool.release(first)
    first.healthy = False
    second = pool.acquire()
    assert second is not first and first.closed
    assert pool.snapshot()["broken"] == 1 and pool.size == 1
    pool.release(second)


def test_health_check_that_raises_counts_as_broken() -> None:
    def check(resource: Resource) -> bool:
        raise OSError("probe failed")

    pool = make_pool(check=check)
    first = pool.acquire()  # a new resource is not checked
    pool.release(first)
    second = pool.acquire()
    assert second is not first and first.closed
    pool.release(second)


def test_release_broken_closes_instead_of_returning() -> None:
    pool = make_pool()
    resource = pool.acquire()
    pool.release(resource, broken=True)
    assert resource.closed and pool.size == 0 and pool.idle == 0


def test_idle_resources_above_min_are_reaped() -> None:
    timer = FakeTimer()
    pool = make_pool(min_size=1, max_size=3, max_idle=10.0, timer=timer)
    held = [pool.acquire() for _ in range(3)]
    for resource in held:
        pool.release(resource)
    timer.now += 5
    assert pool.reap() == 0
    timer.now += 6
    assert pool.reap() == 2
    assert pool.size == 1 and pool.idle == 1
    # The one kept is the most recently used; the oldest-idle went first.
    assert [r.closed for r in held] == [True, True, False]
    timer.now += 100
    assert pool.reap() == 0, "never reaped below min_size for idleness"


def test_max_lifetime_retires_resources() -> None:
    timer = FakeTimer()
    pool = make_pool(max_lifetime=60.0, timer=timer)
    first = pool.acquire()
    pool.release(first)
    timer.now += 61
    second = pool.acquire()
    assert second is not first and first.closed
    timer.now += 61
    pool.release(second)  # too old to go back
    assert second.closed and pool.size == 0


def test_fill_makes_min_size() -> None:
    pool = make_pool(min_size=2, max_size=4)
    assert pool.fill() == 2
    assert pool.size == 2 and pool.idle == 2
    assert pool.fill() == 0


# -- histogram ---------------------------------------------------------------------------


def test_wait_histogram_buckets_quantiles_and_merge() -> None:
    hist = WaitHistogram()
    for seconds in (0.0, 0.000001, 0.000003, 0.001, 0.5, 100.0):
        hist.record(seconds)
    snap = hist.snapshot()
    assert len(snap["counts"]) == len(WAIT_BUCKETS_US) + 1 == len(snap["bounds_us"]) + 1
    assert snap["counts"][0] == 2  # 0 and 1 us
    assert snap["counts"][2] == 1  # 3 us -> (2, 4]
    assert snap["counts"][10] == 1  # 1000 us -> (512, 1024]
    assert snap["counts"][-1] == 1  # beyond 33 s
    assert snap["count"] == 6 and snap["max_s"] == 100.0
    assert hist.quantile(0.5) == pytest.approx(4e-6)
    assert hist.quantile(1.0) == 100.0
    other = WaitHistogram()
    other.record(0.001)
    hist.merge(other)
    assert hist.count == 7 and hist.counts[10] == 2
    with pytest.raises(ValueError):
        hist.quantile(2)


# -- object pools ------------------------------------------------------------------------


class Buffer:
    def __init__(self) -> None:
        self.data = bytearray()
        self.resets = 0

    def reset(self) -> None:
        self.data.clear()
        self.resets += 1


def test_object_pool_reuses_and_resets() -> None:
    pool = ObjectPool(Buffer, max_idle=2)
    with pool.borrowed() as buf:
        buf.data.extend(b"secret")
        first = buf
    assert first.data == b"" and first.resets == 1
    with pool.borrowed() as buf:
        assert buf is first
    snap = pool.snapshot()
    assert snap["created"] == 1 and snap["reused"] == 1 and snap["discarded"] == 0


def test_object_pool_is_bounded_and_counts_discards() -> None:
    pool = ObjectPool(Buffer, max_idle=2)
    objs = [pool.acquire() for _ in range(5)]
    for obj in objs:
        pool.release(obj)
    snap = pool.snapshot()
    assert snap["idle"] == 2 and snap["created"] == 5 and snap["discarded"] == 3


def test_object_pool_bad_input() -> None:
    pool = ObjectPool(Buffer)
    with pytest.raises(ForeignResource):
        pool.release(Buffer())
    obj = pool.acquire()
    pool.release(obj)
    with pytest.raises(ForeignResource):
        pool.release(obj)
    with pytest.raises(TypeError, match="reset"):
        ObjectPool(object)
    pool.close()
    with pytest.raises(PoolClosed):
        pool.acquire()


def test_object_pool_discards_an_object_whose_reset_fails() -> None:
    def bad_reset(obj: Buffer) -> None:
        raise RuntimeError("cannot reset")

    pool = ObjectPool(Buffer, reset=bad_reset)
    obj = pool.acquire()
    with pytest.raises(RuntimeError):
        pool.release(obj)
    assert pool.snapshot()["discarded"] == 1 and pool.snapshot()["idle"] == 0
    assert pool.acquire() is not obj


def test_object_pool_never_lends_one_object_twice_under_threads() -> None:
    pool = ObjectPool(Buffer, max_idle=4)
    errors: list[str] = []

    def work() -> None:
        for _ in range(200):
            with pool.borrowed() as buf:
                if buf.data:
                    errors.append("object lent while in use or not reset")
                buf.data.extend(b"x")
                time.sleep(0)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    snap = pool.snapshot()
    assert snap["in_use"] == 0 and snap["created"] + snap["reused"] == 1600


def test_object_pools_keep_one_pool_per_type() -> None:
    class Parser:
        def reset(self) -> None:
            pass

    pools = ObjectPools(max_idle=1)
    buf = pools.acquire(Buffer)
    parser = pools.acquire(Parser)
    pools.release(buf)
    pools.release(parser)
    assert pools.acquire(Buffer) is buf
    assert set(pools.snapshot()) == {"Buffer", Parser.__qualname__}
    with pytest.raises(ForeignResource):
        pools.release(3)
    pools.close()
    with pytest.raises(PoolClosed):
        pools.acquire(Buffer)


# -- Redis pool (redis-py's BlockingConnectionPool underneath) ---------------------------


def test_redis_pool_lends_one_connection_per_block_and_times_out(cache_url: str) -> None:
    pool = RedisPool("redis", cache_url, max_connections=2, timeout=0.2)
    try:
        with pool.lease() as one, pool.lease() as two:
            assert one.ping() and two.ping()
            assert one.connection is not two.connection
            started = time.monotonic()
            with pytest.raises(PoolTimeout, match=r"'redis' \(max_size=2\)"), pool.lease():
                pass
            assert time.monotonic() - started >= 0.19
        snap = pool.snapshot()
        assert snap["created"] == 2 and snap["in_use"] == 0 and snap["timeouts"] == 1
        assert snap["acquires"] == 2 and snap["wait"]["count"] == 2
        assert pool.client.ping()
    finally:
        pool.close()
    with pytest.raises(PoolClosed), pool.lease():
        pass


def test_redis_pool_bounds_many_threads(cache_url: str) -> None:
    pool = RedisPool("redis", cache_url, max_connections=2, timeout=10.0)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(20):
                with pool.lease() as client:
                    client.set(f"k{threading.get_ident()}", i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    pool.close()
    assert not errors
    assert pool.snapshot()["created"] <= 2


# -- the per-process registry (tiercel.tasks.pools) ----------------------------------------------


def test_registry_builds_defined_pools_on_first_use_and_closes_them(cache_url: str) -> None:
    import os

    from tiercel.core.settings import Settings
    from tiercel.tasks import pools, runtime

    name = f"parsers-{os.getpid()}-{next(Resource.ids)}"
    pools.define_resource(name, Resource, max_size=2)
    with pytest.raises(PoolError, match="already defined"):
        pools.define_resource(name, Resource)
    registry = runtime.start(Settings(cache_url=cache_url)).pools
    try:
        assert registry.built() == {}
        with pools.acquire(name) as resource:
            assert isinstance(resource, Resource)
        with pools.acquire("redis") as client:
            assert client.ping()
        assert registry.creator_pid(name) == registry.creator_pid("redis") == os.getpid()
        assert pools.get(name) is registry.get(name)
        with pytest.raises(PoolError, match=r"no pool named 'nope'.*define_resource"):
            pools.acquire("nope")
        with pytest.raises(PoolError, match="TIERCEL_DATABASE_URL"):
            pools.acquire("db")
        snap = pools.snapshot()
        assert snap["pid"] == os.getpid()
        assert snap["pools"][name]["acquires"] == 1 and snap["pools"]["redis"]["acquires"] == 1
        assert snap["pools"][name]["kind"] == "generic"
        assert snap["pools"]["redis"]["kind"] == "redis"
        assert "memory" in snap and "objects" in snap
    finally:
        runtime.shutdown()
    assert resource.closed, "shutdown closes the process's pools"
    with pytest.raises(PoolClosed):
        registry.acquire(name)
