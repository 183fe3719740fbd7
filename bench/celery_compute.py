"""Cached compute on Celery against plain Celery, same Redis, same workers, one run.

* 2,000 requests over 200 keys, 10 ms compute, 2 worker processes: plain task
  vs cached task, end to end (target >= 9x faster; about 9.5x is the limit: 200
  computations of 10 ms against 2,000, each with Celery's own overhead).
* A submit-side hit vs a no-op Celery round trip (target >= 20x faster).
* A cached task's miss path vs the plain task, one at a time (target <= 1.1x).
* Stampede: 200 concurrent submissions of one cold key from 4 client processes
  on 2 nodes x 2 processes: computations (exactly 1), and how long after the
  value was written the submitters got it (target p99 <= 5 ms); beside it, the
  floor: the same 4 processes x 50 threads woken by one Redis PUBLISH through a
  ``threading.Event``, with no tiercel at all.
* Invalidation: time until every other process has dropped the old value.

The module runs itself in a subprocess (``python -m bench.celery_compute
--child``) so its servers, fleet and Celery app are its own.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench._harness import Row, figure_row, ratio_row, run_child


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _end_to_end(repeats: int, requests: int, keys: int) -> Row:
    from tiercel.tasks.examples import plain_square, slow_square

    rng = random.Random(5)
    # Untimed: the first calls of each task open connection pools and load scripts, in
    # this process and in each worker process; the repeats measure both sides warm.
    warm = [rng.randrange(10**12) for _ in range(20)]
    squares = [n * n for n in warm]
    assert [r.get(timeout=60) for r in [plain_square.delay(n, 10) for n in warm]] == squares
    assert [h.get(timeout=60) for h in [slow_square.submit(n, 10) for n in warm]] == squares
    plain_times: list[float] = []
    cached_times: list[float] = []
    for _ in range(repeats):
        base = rng.randrange(10**12)
        workload = [base + rng.randrange(keys) for _ in range(requests)]
        started = time.perf_counter()
        results = [plain_square.delay(n, 10) for n in workload]
        assert [r.get(timeout=300) for r in results] == [n * n for n in workload]
        plain_times.append(time.perf_counter() - started)

        started = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            handles = list(pool.map(lambda n: slow_square.submit(n, 10), workload))
        assert [h.get(timeout=300) for h in handles] == [n * n for n in workload]
        cached_times.append(time.perf_counter() - started)
    # The ratio is "times faster": plain seconds / cached seconds.
    row = ratio_row(
        f"{requests} requests / {keys} keys, 10 ms compute, 2 processes: "
        "plain Celery time / cached time",
        plain_times,
        "plain Celery task",
        cached_times,
        unit="s",
    )
    row["tiercel"], row["peer_value"] = (
        statistics.median(cached_times),
        statistics.median(plain_times),
    )
    row["target"] = ">= 9x faster"
    row["met"] = row["ratio"] >= 9
    return row


def _submit_hit_vs_round_trip(repeats: int, calls: int) -> Row:
    from tiercel.tasks import runtime
    from tiercel.tasks.examples import noop, slow_square

    rt = runtime.current()
    hit_us: list[float] = []
    trip_us: list[float] = []
    for _ in range(repeats):
        base = random.randrange(10**12)
        numbers = [base + i for i in range(calls)]
        for n in numbers:  # in Redis, never seen by this client: each submit is a Redis hit
            rt.cache.tier.set(rt.key(slow_square.tiercel_spec, (n,), {}), n * n, ttl=600)
        started = time.perf_counter()
        for n in numbers:
            handle = slow_square.submit(n)
            assert handle.source == "redis" and handle.get() == n * n
        hit_us.append((time.perf_counter() - started) / calls * 1e6)
        started = time.perf_counter()
        for _ in range(calls):
            noop.delay().get(timeout=30)
        trip_us.append((time.perf_counter() - started) / calls * 1e6)
    row = ratio_row(
        "submit-side hit (Redis) vs no-op Celery round trip",
        trip_us,
        "no-op task .delay().get()",
        hit_us,
    )
    row["tiercel"], row["peer_value"] = statistics.median(hit_us), statistics.median(trip_us)
    row["target"] = ">= 20x faster"
    row["met"] = row["ratio"] >= 20
    return row


def _miss_path(repeats: int, calls: int) -> Row:
    from tiercel.tasks.examples import plain_square, slow_square

    cached_ms: list[float] = []
    plain_ms: list[float] = []
    for _ in range(repeats):
        base = random.randrange(10**12)
        started = time.perf_counter()
        for i in range(calls):
            assert slow_square.submit(base + i, 10).get(timeout=30) == (base + i) ** 2
        cached_ms.append((time.perf_counter() - started) / calls * 1e3)
        started = time.perf_counter()
        for i in range(calls):
            assert plain_square.delay(base + i, 10).get(timeout=30) == (base + i) ** 2
        plain_ms.append((time.perf_counter() - started) / calls * 1e3)
    return ratio_row(
        "cached task miss path vs plain task (10 ms compute, one at a time)",
        cached_ms,
        "plain Celery task",
        plain_ms,
        target=1.1,
        unit="ms",
    )


#: Client processes start fresh (spawn): each imports its own app, nothing inherited.
_SPAWN = multiprocessing.get_context("spawn")


def _started(count: int, target: Any, args: tuple[Any, ...]) -> list[Any]:
    """``count`` fresh client processes running ``target(*args)``, started."""
    procs = [_SPAWN.Process(target=target, args=args) for _ in range(count)]
    for proc in procs:
        proc.start()
    return procs


def _stampede_client(n: int, counter: str, threads: int, start: Any, out: Any) -> None:
    import tiercel.workers.app  # noqa: F401
    from tiercel.tasks.examples import counted_square

    barrier = threading.Barrier(threads)
    returned: list[float] = []

    def one(_: int) -> None:
        barrier.wait()
        start.wait(30)
        counted_square.submit(n, counter, 200).get(timeout=60)
        returned.append(time.time())

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(threads)))
    out.put(returned)


def _stampede(clients: int = 4, threads: int = 50) -> list[Row]:
    import redis

    from tiercel.core.encoding.entry import Entry
    from tiercel.tasks import runtime
    from tiercel.tasks.examples import counted_square

    rt = runtime.current()
    n = random.randrange(10**12)
    counter = f"bench:count:{n}"
    start, out = _SPAWN.Event(), _SPAWN.Queue()
    procs = _started(clients, _stampede_client, (n, counter, threads, start, out))
    time.sleep(3.0)  # every client imported the app and waits at its barrier
    start.set()
    returned = [stamp for _ in procs for stamp in out.get(timeout=120)]
    for proc in procs:
        proc.join(30)
    raw = redis.Redis.from_url(rt.settings.cache_url or "")
    computations = int(raw.get(counter) or 0)
    key = rt.key(counted_square.tiercel_spec, (n, counter, 200), {})
    written_at = Entry.unpack(raw.get(key) or b"").stored_at
    raw.close()
    lags_ms = [(stamp - written_at) * 1e3 for stamp in returned]
    return [
        figure_row(
            f"stampede: {clients * threads} concurrent submissions of one cold key, computations",
            computations,
            "count",
            target="== 1",
            met=computations == 1,
        ),
        figure_row(
            "stampede: submitters answered after the write, p99",
            _percentile(lags_ms, 99),
            "ms",
            target="<= 5 ms",
            met=_percentile(lags_ms, 99) <= 5,
            note=f"p50 {_percentile(lags_ms, 50):.1f} ms, max {max(lags_ms):.1f} ms",
            spread=(min(lags_ms), max(lags_ms)),
        ),
    ]


def _wake_floor_client(url: str, channel: str, threads: int, ready: Any, out: Any) -> None:
    import redis

    client = redis.Redis.from_url(url)
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    woken = threading.Event()
    returned: list[float] = []

    def one() -> None:
        woken.wait(60)
        returned.append(time.time())

    waiting = [threading.Thread(target=one) for _ in range(threads)]
    for thread in waiting:
        thread.start()
    while pubsub.get_message(timeout=1.0) is None:  # the subscription is confirmed
        pass
    ready.put(os.getpid())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1.0)
        if message is not None and message["type"] == "message":
            break
    woken.set()
    for thread in waiting:
        thread.join()
    pubsub.close()
    client.close()
    out.put(returned)


def _wake_floor(url: str, clients: int = 4, threads: int = 50, trials: int = 3) -> Row:
    """The stampede's shape with no tiercel: in each of ``clients`` processes,
    ``threads`` threads wait on one ``threading.Event`` that a listener thread sets when
    one Redis PUBLISH arrives. How late the last of them return is what waking that
    many threads costs here: the floor under the stampede row."""
    import redis

    publisher = redis.Redis.from_url(url)
    lags_ms: list[float] = []
    per_trial: list[float] = []
    for _ in range(trials):
        channel = f"bench:wake-floor:{uuid.uuid4().hex}"
        ready, out = _SPAWN.Queue(), _SPAWN.Queue()
        procs = _started(clients, _wake_floor_client, (url, channel, threads, ready, out))
        for _ in procs:
            ready.get(timeout=60)
        time.sleep(0.5)
        published_at = time.time()
        publisher.publish(channel, "wake")
        trial = [(stamp - published_at) * 1e3 for _ in procs for stamp in out.get(timeout=60)]
        for proc in procs:
            proc.join(30)
        per_trial.append(_percentile(trial, 99))
        lags_ms.extend(trial)
    publisher.close()
    return figure_row(
        f"stampede floor, no tiercel: {clients} processes x {threads} threads woken by one "
        "Redis PUBLISH (threading.Event), p99",
        _percentile(lags_ms, 99),
        "ms",
        note=f"p50 {_percentile(lags_ms, 50):.1f} ms over {trials} trials; what waking "
        "that many threads costs on this machine, beside the stampede row",
        spread=(min(per_trial), max(per_trial)),
    )


def _worker_waiters(processes: int = 4, trials: int = 5) -> Row:
    """One cold key delivered to every worker process at once (``.delay()`` bypasses
    submit-side coalescing): one computes, the others wait on its lease and must
    answer right after the write, woken by the notification."""
    import redis

    from tiercel.core.encoding.entry import Entry
    from tiercel.tasks import runtime
    from tiercel.tasks.examples import counted_square

    rt = runtime.current()
    raw = redis.Redis.from_url(rt.settings.cache_url or "")
    lags_ms: list[float] = []
    extra = 0
    for _ in range(trials):
        n = random.randrange(10**12)
        counter = f"bench:count:{n}"
        results = [counted_square.delay(n, counter, 300) for _ in range(processes)]
        assert [r.get(timeout=60) for r in results] == [n * n] * processes
        written_at = Entry.unpack(
            raw.get(rt.key(counted_square.tiercel_spec, (n, counter, 300), {})) or b""
        ).stored_at
        extra += int(raw.get(counter) or 0) - 1
        lags_ms.extend((r.date_done.timestamp() - written_at) * 1e3 for r in results)
    raw.close()
    p99 = _percentile(lags_ms, 99)
    return figure_row(
        f"stampede on the workers: {processes} processes run one cold key, "
        "answered after the write, p99",
        p99,
        "ms",
        target="<= 5 ms",
        met=p99 <= 5 and extra == 0,
        note=f"extra computations {extra}; includes Celery's result write",
        spread=(min(lags_ms), max(lags_ms)),
    )


def _invalidation_reader(key: str, ready: Any, out: Any) -> None:
    import tiercel.workers.app  # noqa: F401
    from tiercel.tasks import runtime

    rt = runtime.current()
    seen = threading.Event()
    stamps: list[float] = []
    handler = rt.notifier.on_invalidate

    def record(invalidated: str) -> None:
        if handler is not None:
            handler(invalidated)
        if invalidated == key:
            stamps.append(time.time())
            seen.set()

    rt.notifier.on_invalidate = record
    while True:
        rt.cache.lookup(key)  # the value is now in this process's local levels
        ready.put(os.getpid())
        if not seen.wait(30):
            return
        out.put(stamps[-1])
        seen.clear()


def _invalidation(trials: int, readers: int = 4) -> Row:
    from tiercel.tasks import runtime

    rt = runtime.current()
    key = f"{rt.namespace}:v:bench:invalidate:{{{uuid.uuid4().hex}}}"
    rt.cache.set(key, "v0", ttl=600)
    context = multiprocessing.get_context("spawn")
    ready, out = context.Queue(), context.Queue()
    procs = [
        context.Process(target=_invalidation_reader, args=(key, ready, out), daemon=True)
        for _ in range(readers)
    ]
    for proc in procs:
        proc.start()
    worst_ms: list[float] = []
    for trial in range(trials):
        for _ in procs:
            ready.get(timeout=60)
        time.sleep(0.02)
        rt.cache.set(key, f"v{trial}", ttl=600)
        started = time.time()
        rt.cache.invalidate(key)
        stamps = [out.get(timeout=30) for _ in procs]
        worst_ms.append(max(stamps) * 1e3 - started * 1e3)
        rt.cache.set(key, f"v{trial + 1}", ttl=600)
    for proc in procs:
        proc.terminate()
    p50, p99 = _percentile(worst_ms, 50), _percentile(worst_ms, 99)
    return figure_row(
        f"invalidation reaches all {readers} other processes, p99 over {trials}",
        p99,
        "ms",
        target="<= 50 ms",
        met=p99 <= 50,
        note=f"p50 {p50:.2f} ms",
        spread=(min(worst_ms), max(worst_ms)),
    )


def child(quick: bool) -> list[Row]:
    """Start servers and a fleet, run every benchmark, return rows (runs in the child)."""
    from tiercel.core.embedded.redis_server import RedisServer

    with (
        RedisServer(maxmemory_policy="noeviction") as broker,
        RedisServer(maxmemory=512 * 2**20, maxmemory_policy="allkeys-lru") as cache,
    ):
        os.environ.update(
            {
                "TIERCEL_BROKER_URL": broker.url,
                "TIERCEL_RESULT_BACKEND": broker.url,
                "TIERCEL_CACHE_URL": cache.url,
            }
        )
        import tiercel.workers.app  # noqa: F401
        from tiercel.core.settings import resolve_settings
        from tiercel.workers.launcher import Fleet, FleetSpec

        rows: list[Row] = []
        one_node = FleetSpec(
            workers=1, concurrency=2, beat=False, flower=False, quiet=True, loglevel="ERROR"
        )
        with Fleet(resolve_settings(), one_node).running():
            from tiercel.tasks.examples import noop

            noop.delay().get(timeout=60)
            rows.append(
                _end_to_end(2 if quick else 3, 500 if quick else 2000, 50 if quick else 200)
            )
            rows.append(_submit_hit_vs_round_trip(3 if quick else 5, 100 if quick else 300))
            rows.append(_miss_path(3 if quick else 5, 30 if quick else 100))
        two_nodes = FleetSpec(
            workers=2, concurrency=2, beat=False, flower=False, quiet=True, loglevel="ERROR"
        )
        with Fleet(resolve_settings(), two_nodes).running():
            noop.delay().get(timeout=60)
            rows.extend(_stampede())
            rows.append(_wake_floor(cache.url))
            rows.append(_worker_waiters())
            rows.append(_invalidation(20 if quick else 100))
        from tiercel.tasks import runtime

        runtime.shutdown()
        return rows


def run(quick: bool = False) -> list[Row]:
    """Run :func:`child` in a fresh interpreter and return its rows."""
    return run_child("bench.celery_compute", quick, timeout=900)


if __name__ == "__main__":
    if "--child" in sys.argv:
        print(json.dumps(child("--quick" in sys.argv)))
    else:
        from bench.report import print_table

        print_table(run("--quick" in sys.argv))
