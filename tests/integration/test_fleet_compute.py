"""Cached compute across real worker processes: coalescing, single-flight, errors, invalidation.

The session fleet is 2 prefork nodes x 2 processes (tests/integration/conftest.py).
Computations are counted by the function itself (an INCR in Redis), so
"exactly one computation" is measured, not inferred.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from tiercel.core.tier.redis_tier import InflightRead
from tiercel.tasks.examples import counted_square
from tiercel.workers.launcher import Fleet


def fresh() -> tuple[int, str]:
    """A key nobody computed yet, and the name of its computation counter."""
    n = uuid.uuid4().int % 10**9
    return n, f"test:count:{n}"


def computations(cache_client: redis.Redis, counter: str) -> int:
    return int(cache_client.get(counter) or 0)


def test_concurrent_submissions_in_one_client_publish_one_task(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    from celery import signals

    n, counter = fresh()
    published: list[str] = []

    def count(sender: Any = None, **_: Any) -> None:
        published.append(str(sender))

    signals.before_task_publish.connect(count, weak=False)
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda _: counted_square.submit(n, counter, 300), range(40)))
    finally:
        signals.before_task_publish.disconnect(count)
    assert [r.get(timeout=30) for r in results] == [n * n] * 40
    assert published == ["tiercel.tasks.examples.counted_square"]
    sources = [r.source for r in results]
    assert sources.count("computed") == 1 and sources.count("joined") >= 1
    assert computations(cache_client, counter) == 1


def test_a_process_joins_its_own_task_without_a_round_trip(
    fleet: Fleet, cache_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tiercel.tasks import runtime

    rt = runtime.current()
    n, counter = fresh()
    first = counted_square.submit(n, counter, 500)
    assert first.source == "computed"
    asked: list[str] = []

    def asked_redis(name: str) -> Any:
        def refuse(*_: Any, **__: Any) -> Any:
            asked.append(name)
            raise AssertionError(f"{name}: asked Redis for a task this process published")

        return refuse

    with monkeypatch.context() as patched:
        patched.setattr(rt.tier, "get_entry", asked_redis("get_entry"))
        patched.setattr(rt.tier, "read_or_claim", asked_redis("read_or_claim"))
        patched.setattr(rt.leases, "claim_inflight", asked_redis("claim_inflight"))
        again = counted_square.submit(n, counter, 500)
    assert asked == []
    assert again.source == "joined" and again.task_id == first.task_id
    assert again.get(timeout=30) == first.get(timeout=30) == n * n
    # The write was heard: the next submit is a hit, not a join of a finished task.
    assert counted_square.submit(n, counter, 500).source in ("memory", "redis")
    assert computations(cache_client, counter) == 1


def test_a_submit_answered_by_redis_counts_one_local_miss(fleet: Fleet) -> None:
    from tiercel.tasks import runtime

    rt = runtime.current()
    n, counter = fresh()
    key = rt.key(counted_square.tiercel_spec, (n, counter, 10), {})
    rt.tier.set(key, n * n, ttl=60)  # in Redis only: every local level misses
    before = [level.stats.misses for level in rt.cache.levels]
    found = counted_square.submit(n, counter, 10)
    assert found.source == "redis" and found.get(timeout=5) == n * n
    after = [level.stats.misses for level in rt.cache.levels]
    assert [b - a for a, b in zip(before, after, strict=True)] == [1] * len(before)


def test_while_the_channel_is_not_trusted_a_submit_asks_redis(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tiercel.tasks import runtime

    rt = runtime.current()
    n, counter = fresh()
    first = counted_square.submit(n, counter, 500)
    reads: list[InflightRead] = []
    read_or_claim = rt.tier.read_or_claim

    def counted_read(key: str, task_id: str, ttl: float) -> InflightRead:
        reads.append(read_or_claim(key, task_id, ttl))
        return reads[-1]

    with monkeypatch.context() as patched:
        # Messages may be lost while the channel is not known to be live: what this
        # process remembers of its own task may be outdated, as a local value may be.
        patched.setattr(type(rt.liveness), "remaining", lambda _: 0.0)
        patched.setattr(rt.tier, "read_or_claim", counted_read)
        again = counted_square.submit(n, counter, 500)
    assert reads == [InflightRead("joined", task_id=first.task_id)], "Redis's answer"
    assert again.source == "joined" and again.get(timeout=30) == n * n


def test_threads_waiting_on_one_task_share_one_wait(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    from tiercel.tasks import runtime

    rt = runtime.current()
    n, counter = fresh()
    before = rt.waits.shared

    def submit_and_get(_: int) -> int:
        return int(counted_square.submit(n, counter, 400).get(timeout=30))

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(submit_and_get, range(20)))
    assert answers == [n * n] * 20
    assert computations(cache_client, counter) == 1
    # One thread listened and read; the others, waiting when the value was written,
    # took its answer instead of being woken to read it again.
    assert rt.waits.shared - before >= 15
    assert rt.waits.running == 0


def _client_process(n: int, counter: str, threads: int, out: Any) -> None:
    from celery import signals

    import tiercel.workers.app  # noqa: F401  (configured from the inherited environment)
    from tiercel.tasks.examples import counted_square as task

    published: list[str] = []
    signals.before_task_publish.connect(lambda **_: published.append("x"), weak=False)
    with ThreadPoolExecutor(threads) as pool:
        values = list(
            pool.map(lambda _: task.submit(n, counter, 500).get(timeout=60), range(threads))
        )
    out.put((len(published), values))


def test_submissions_from_many_client_processes_publish_one_task(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    n, counter = fresh()
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    clients = [context.Process(target=_client_process, args=(n, counter, 8, out)) for _ in range(3)]
    for client in clients:
        client.start()
    reports = [out.get(timeout=120) for _ in clients]
    for client in clients:
        client.join(30)
    assert sum(published for published, _ in reports) == 1
    assert all(values == [n * n] * 8 for _, values in reports)
    assert computations(cache_client, counter) == 1


def test_duplicate_tasks_on_every_worker_compute_once(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    # .delay() bypasses submit-side coalescing: the workers' leases must hold the line.
    n, counter = fresh()
    results = [counted_square.delay(n, counter, 400) for _ in range(8)]
    assert [r.get(timeout=60) for r in results] == [n * n] * 8
    assert computations(cache_client, counter) == 1


def test_a_failure_reaches_every_joined_submitter_and_is_not_cached(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    n, counter = fresh()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: counted_square.submit(n, counter, 200, True), range(8)))
    errors = []
    for result in results:
        with pytest.raises(ValueError, match="failed on purpose") as info:
            result.get(timeout=30)
        errors.append(str(info.value))
    assert len(set(errors)) == 1
    assert computations(cache_client, counter) == 1
    # Not cached: the next submission computes again (and fails again).
    again = counted_square.submit(n, counter, 10, True)
    assert again.source == "computed"
    with pytest.raises(ValueError):
        again.get(timeout=30)
    assert computations(cache_client, counter) == 2


def test_invalidate_reaches_every_tier(fleet: Fleet, cache_client: redis.Redis) -> None:
    n, counter = fresh()
    assert counted_square.submit(n, counter, 10).get(timeout=30) == n * n
    assert counted_square.submit(n, counter, 10).source in ("redis", "memory")
    counted_square.invalidate(n, counter, 10)
    after = counted_square.submit(n, counter, 10)
    assert after.source == "computed" and after.get(timeout=30) == n * n
    assert computations(cache_client, counter) == 2


def test_invalidation_racing_an_inflight_computation_is_not_undone(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    n, counter = fresh()
    first = counted_square.submit(n, counter, 1500)
    deadline = time.monotonic() + 20
    while computations(cache_client, counter) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)  # wait until the computation is running on a worker
    counted_square.invalidate(n, counter, 1500)
    assert first.get(timeout=30) == n * n  # its requester still gets an answer
    # ...but the value computed before the invalidation was not written back.
    after = counted_square.submit(n, counter, 1500)
    assert after.source == "computed", "a stale in-flight value was written back"
    assert after.get(timeout=30) == n * n
    assert computations(cache_client, counter) == 2


def test_invalidate_all_is_a_version_bump_seen_by_workers(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    from tiercel.tasks.examples import slow_square

    n = uuid.uuid4().int % 10**6
    assert slow_square.submit(n).get(timeout=30) == n * n
    assert slow_square.submit(n).source in ("redis", "memory")
    slow_square.invalidate_all()
    assert slow_square.submit(n).source == "computed"


def _reader_process(key: str, ready: Any, go: Any, out: Any) -> None:
    import tiercel.workers.app  # noqa: F401
    from tiercel.tasks import runtime

    rt = runtime.current()
    assert rt.cache.lookup(key) is not None  # now in this process's local levels
    ready.put(os.getpid())
    go.wait(30)
    started = time.perf_counter()
    while rt.cache.lookup(key, remote=False) is not None:
        if time.perf_counter() - started > 5:
            out.put(None)
            return
        time.sleep(0.0005)
    out.put(time.time())


def test_invalidation_reaches_other_processes_local_levels_quickly(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    from tiercel.tasks import runtime

    rt = runtime.current()
    key = f"tiercel:v:test:invalidate:{{{uuid.uuid4().hex}}}"
    rt.cache.set(key, "old", ttl=600)
    context = multiprocessing.get_context("spawn")
    ready, out, go = context.Queue(), context.Queue(), context.Event()
    readers = [
        context.Process(target=_reader_process, args=(key, ready, go, out)) for _ in range(3)
    ]
    for reader in readers:
        reader.start()
    for _ in readers:
        ready.get(timeout=60)
    go.set()
    time.sleep(0.2)  # every reader is now polling its own local levels
    invalidated_at = time.time()
    rt.cache.invalidate(key)
    seen = [out.get(timeout=30) for _ in readers]
    for reader in readers:
        reader.join(30)
    assert None not in seen, "a process kept serving an invalidated value"
    delays = [stamp - invalidated_at for stamp in seen]
    assert max(delays) < 1.0, delays


def test_a_worker_waiting_on_a_lease_is_woken_by_the_write(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    # This client holds the lease; a worker process runs the same key and must wait,
    # then answer right after the write, woken by the notification (no polling loop).
    n, counter = fresh()
    computing = threading.Event()
    written: list[float] = []

    def hold() -> None:
        computing.set()
        counted_square.cached_call(n, counter, 1000)
        written.append(time.time())

    holder = threading.Thread(target=hold)
    holder.start()
    computing.wait(5)
    time.sleep(0.2)  # the client's computation is under way and holds the lease
    remote = counted_square.delay(n, counter, 1000)
    holder.join(30)
    assert remote.get(timeout=30) == n * n
    assert computations(cache_client, counter) == 1
    assert remote.date_done is not None
    lag = remote.date_done.timestamp() - written[0]
    assert lag < 0.5, f"the waiting worker answered {lag:.3f}s after the write"


def test_stale_while_revalidate_on_the_fleet(fleet: Fleet, cache_client: redis.Redis) -> None:
    from tiercel.tasks.examples import fx_quote

    pair = f"EUR{uuid.uuid4().hex[:6]}"
    counter = f"test:count:{pair}"
    first = fx_quote.submit(pair, counter)
    assert first.get(timeout=30)["revision"] == 1
    time.sleep(1.2)  # fresh for 1 s; now stale (kept for 60 s more)
    with ThreadPoolExecutor(10) as pool:
        stale = list(pool.map(lambda _: fx_quote.submit(pair, counter), range(20)))
    assert all(r.task_id is None for r in stale), "stale readers are answered at once, no task"
    # The refresh computes instantly: readers after its write see its value, from the cache.
    revisions = [r.get()["revision"] for r in stale]
    assert 1 in revisions and set(revisions) <= {1, 2}, revisions
    deadline = time.monotonic() + 20
    while computations(cache_client, counter) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert computations(cache_client, counter) == 2, "20 stale reads, exactly one refresh"
    deadline = time.monotonic() + 10
    revision = 1
    while revision == 1 and time.monotonic() < deadline:
        revision = fx_quote.submit(pair, counter).get(timeout=10)["revision"]
        time.sleep(0.05)
    assert revision == 2


def test_a_listed_failure_is_cached_and_raised_as_its_own_type(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    from tiercel.tasks.examples import AccountNotFound, account_summary

    account = (uuid.uuid4().int % 10**6) * 2 + 1  # odd: does not exist
    counter = f"test:count:account:{account}"
    first = account_summary.submit(account, counter)
    with pytest.raises(AccountNotFound):
        first.get(timeout=30)
    again = account_summary.submit(account, counter)
    assert again.task_id is None, "a cached failure is answered without a task"
    with pytest.raises(AccountNotFound, match=f"no account {account}"):
        again.get()
    assert computations(cache_client, counter) == 1


def test_submit_many_treats_an_expired_cached_failure_as_a_miss(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    from tiercel.tasks.examples import AccountNotFound, account_summary

    account = (uuid.uuid4().int % 10**6) * 2 + 1
    counter = f"test:count:account:{account}"
    with pytest.raises(AccountNotFound):
        account_summary.submit(account, counter).get(timeout=30)
    [cached] = account_summary.submit_many([(account, counter)])
    assert cached.task_id is None  # within error_ttl: the cached failure answers
    with pytest.raises(AccountNotFound):
        cached.get()
    time.sleep(2.1)  # past error_ttl (2 s)
    [again] = account_summary.submit_many([(account, counter)])
    assert again.task_id is not None  # recomputed, not the old failure
    with pytest.raises(AccountNotFound):
        again.get(timeout=30)
    assert computations(cache_client, counter) == 2


def test_submit_many_decides_as_submit_does_source_and_freshness(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    from tiercel.tasks import runtime
    from tiercel.tasks.examples import fx_quote

    pair = f"GBP{uuid.uuid4().hex[:6]}"
    counter = f"test:count:{pair}"
    assert fx_quote.submit(pair, counter).get(timeout=30)["revision"] == 1
    runtime.current().cache.clear_local()  # as a fresh client: only Redis holds it
    [from_redis] = fx_quote.submit_many([(pair, counter)])
    [local] = fx_quote.submit_many([(pair, counter)])
    assert (from_redis.source, local.source) == ("redis", "memory"), (
        "a hit is labelled by the tier that answered it, as submit() labels it"
    )
    assert local.source == fx_quote.submit(pair, counter).source
    time.sleep(1.2)  # fresh for 1 s; now stale (kept for 60 s more, served while revalidated)
    stale = fx_quote.submit_many([(pair, counter)] * 5)
    assert all(r.task_id is None and r.get()["revision"] == 1 for r in stale)
    deadline = time.monotonic() + 20
    while computations(cache_client, counter) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert computations(cache_client, counter) == 2, "5 stale reads in one batch, one refresh"


def test_without_revalidate_a_reader_past_the_ttl_waits_for_the_refresh(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    from tiercel.tasks.examples import strict_quote

    pair = f"GBP{uuid.uuid4().hex[:6]}"
    counter = f"test:count:{pair}"
    assert strict_quote.submit(pair, counter).get(timeout=30)["revision"] == 1
    time.sleep(1.2)  # past the 1 s ttl; the value is kept (stale) for 60 s more
    later = strict_quote.submit(pair, counter)
    assert later.task_id is not None  # not answered from the stale value...
    assert later.get(timeout=30)["revision"] == 2  # ...but by the refresh it waited for
    assert computations(cache_client, counter) == 2


def test_a_task_message_the_broker_lost_is_republished_by_its_waiter(fleet: Fleet) -> None:
    from celery.result import AsyncResult

    from tiercel.tasks import runtime
    from tiercel.tasks.examples import slow_square
    from tiercel.tasks.results import CachedResult

    rt = runtime.current()
    n = uuid.uuid4().int % 10**9
    key = rt.key(slow_square.tiercel_spec, (n, 10), {})
    lost = str(uuid.uuid4())  # a task id whose message never reached a worker
    published: list[str] = []

    def resubmit() -> object:
        published.append(lost)
        return slow_square.apply_async((n, 10), task_id=lost)

    result = CachedResult(
        key=key,
        source="computed",
        runtime=rt,
        cache=rt.cache,
        spec=slow_square.tiercel_spec,
        async_result=AsyncResult(lost, app=slow_square.app),
        resubmit=resubmit,
        republish_after=1.0,
    )
    assert result.get(timeout=30) == n * n
    assert published == [lost]  # once: the re-published task then computed it


def test_a_claimed_task_sends_its_claim_before_the_body_and_keeps_its_value_after(
    fleet: Fleet, cache_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Celery's tracer (``apply`` runs it in this process, signals and all): a task its
    submitter claimed sends the lease claim from ``task_prerun``, before the body; the
    body claims nothing itself; the write-back's answer is heard at ``task_postrun``."""
    from tiercel.tasks import examples, runtime
    from tiercel.tasks.cached import INFLIGHT_HEADER

    rt = runtime.current()
    n, counter = fresh()
    key = rt.key(counted_square.tiercel_spec, (n, counter, 10), {})
    steps: list[str] = []
    send_acquire, count_and_sleep = rt.leases.send_acquire, examples._count_and_sleep

    def sent(*args: Any, **kwargs: Any) -> Any:
        steps.append("claim sent")
        return send_acquire(*args, **kwargs)

    def body(*args: Any) -> None:
        steps.append("body")
        count_and_sleep(*args)

    def refused(*_: Any, **__: Any) -> Any:
        raise AssertionError("the body claimed the lease again")

    unused = rt.coordinator.claims_ahead_unused
    with monkeypatch.context() as patched:
        patched.setattr(rt.leases, "send_acquire", sent)
        patched.setattr(rt.leases, "acquire", refused)
        patched.setattr(examples, "_count_and_sleep", body)
        done = counted_square.apply(
            (n, counter, 10), task_id=str(uuid.uuid4()), headers={INFLIGHT_HEADER: True}
        )
    assert done.get() == n * n
    assert steps == ["claim sent", "body"]
    assert rt.coordinator.claims_ahead_unused == unused
    local = rt.cache.lookup(key, remote=False)  # its own value, kept once the answer came
    assert local is not None and local.value == n * n
    assert computations(cache_client, counter) == 1


def test_a_task_answered_locally_sends_no_claim_ahead(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tiercel.tasks import runtime
    from tiercel.tasks.cached import INFLIGHT_HEADER

    rt = runtime.current()
    n, counter = fresh()
    assert counted_square.cached_call(n, counter, 10) == n * n  # now in this process's levels
    sent: list[str] = []
    monkeypatch.setattr(rt.leases, "send_acquire", lambda key, *_, **__: sent.append(key))
    done = counted_square.apply(
        (n, counter, 10), task_id=str(uuid.uuid4()), headers={INFLIGHT_HEADER: True}
    )
    assert done.get() == n * n
    assert sent == []


def test_a_submit_whose_publish_failed_leaves_nothing_to_join(
    fleet: Fleet, cache_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key is marked in flight (in Redis and in this process) before the publish, so
    that concurrent submits join at once; a publish that raises takes both marks back."""
    from celery import Task

    from tiercel.core.encoding.cache_key import CacheKey
    from tiercel.tasks import runtime

    rt = runtime.current()
    n, counter = fresh()
    key = rt.key(counted_square.tiercel_spec, (n, counter, 10), {})
    with monkeypatch.context() as patched:

        def broker_down(*_: Any, **__: Any) -> Any:
            assert rt.joins.task_of(key, rt.cache.epoch) is not None  # joinable already
            raise ConnectionError("broker down")

        patched.setattr(Task, "apply_async", broker_down)
        with pytest.raises(ConnectionError):
            counted_square.submit(n, counter, 10)
    assert rt.joins.task_of(key, rt.cache.epoch) is None
    assert cache_client.get(CacheKey.of(key).inflight) is None
    again = counted_square.submit(n, counter, 10)
    assert again.source == "computed" and again.get(timeout=30) == n * n
    assert computations(cache_client, counter) == 1


def test_a_submit_that_misses_everywhere_reads_and_claims_in_one_round_trip(
    fleet: Fleet, cache_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tiercel.tasks import runtime

    rt = runtime.current()
    n, counter = fresh()
    key = rt.key(counted_square.tiercel_spec, (n, counter, 10), {})

    def refused(*_: Any, **__: Any) -> Any:
        raise AssertionError("a second round trip")

    with monkeypatch.context() as patched:
        patched.setattr(rt.tier, "get_entry", refused)
        patched.setattr(rt.leases, "claim_inflight", refused)
        computed = counted_square.submit(n, counter, 10)
    assert computed.source == "computed" and computed.get(timeout=30) == n * n
    rt.cache.discard_local(key)  # in Redis only now: the same trip answers with it
    rt.joins.forget(key)
    with monkeypatch.context() as patched:
        patched.setattr(rt.tier, "get_entry", refused)
        patched.setattr(rt.leases, "claim_inflight", refused)
        again = counted_square.submit(n, counter, 10)
    assert again.source == "redis" and again.get(timeout=5) == n * n
    assert computations(cache_client, counter) == 1


def test_a_stale_value_in_redis_is_claimed_over_in_a_second_trip(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    """A value the freshness policy refuses (past its ttl, no stale-while-revalidate)
    came back instead of a claim: the submit then claims, and the task computes."""
    from tiercel.tasks import runtime
    from tiercel.tasks.examples import strict_quote

    rt = runtime.current()
    pair, counter = f"EUR{uuid.uuid4().hex[:6]}", f"test:count:{uuid.uuid4().hex}"
    assert strict_quote.submit(pair, counter).get(timeout=30)["revision"] == 1
    key = rt.key(strict_quote.tiercel_spec, (pair, counter), {})
    time.sleep(1.1)  # past its 1 s ttl, inside its stale window
    rt.cache.discard_local(key)
    refreshed = strict_quote.submit(pair, counter)
    assert refreshed.source == "computed"
    assert refreshed.get(timeout=30)["revision"] == 2
