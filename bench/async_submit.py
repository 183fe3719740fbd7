"""``await task.asubmit(...)`` on one event loop, against its sync twin and cashews.

* A submit answered from Redis: ``asubmit`` + ``aget`` vs ``submit`` + ``get`` of
  the same keys (target <= 1.2x) and vs cashews' ``get`` on the same Redis
  (target <= 1.0x). Every call reads a key this process has not read yet: each
  repeat writes a fresh key per call into Redis, and the local levels are
  cleared between the timed passes (outside the timing), so each call misses
  locally and is answered by one Redis read.
* Stampede from one loop: 200 concurrent ``asubmit`` of one cold key against
  2 nodes x 2 prefork processes: computations (exactly 1), how long after the
  value was written each awaiter was answered (p99 <= 5 ms), and the loop's
  worst stall meanwhile (a ticker sleeping 1 ms: <= 10 ms overshoot).
* 1,000 concurrent awaits over 100 cold keys from one loop: wall time and p99
  against the same requests through ``asyncio.to_thread(task.submit(x).get)``.

The module runs itself in a subprocess (``python -m bench.async_submit
--child``) so its servers, fleet and Celery app are its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench._harness import Row, figure_row, ratio_row, run_child

#: The ticker's sleep; its overshoot is how long the loop could not run it.
TICK = 0.001


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def _redis_answered(repeats: int, calls: int) -> list[Row]:
    from cashews import Cache

    from tiercel.tasks import runtime
    from tiercel.tasks.examples import slow_square

    rt = runtime.current()
    spec = slow_square.tiercel_spec
    peer = Cache()
    peer.setup(rt.settings.cache_url or "", client_side=False)
    async_us: list[float] = []
    sync_us: list[float] = []
    peer_us: list[float] = []

    async def ours(numbers: list[int]) -> float:
        started = time.perf_counter()
        for n in numbers:
            result = await slow_square.asubmit(n)
            assert result.source == "redis" and await result.aget() == n * n
        return (time.perf_counter() - started) / len(numbers) * 1e6

    def theirs_sync(numbers: list[int]) -> float:
        started = time.perf_counter()
        for n in numbers:
            result = slow_square.submit(n)
            assert result.source == "redis" and result.get() == n * n
        return (time.perf_counter() - started) / len(numbers) * 1e6

    async def cashews(names: list[str]) -> float:
        started = time.perf_counter()
        for name in names:
            assert await peer.get(name) is not None
        return (time.perf_counter() - started) / len(names) * 1e6

    def fresh(count: int) -> tuple[list[int], list[str]]:
        base = random.randrange(10**12)
        numbers = [base + i for i in range(count)]
        for n in numbers:  # in Redis, never read by this process yet
            rt.cache.tier.set(rt.key(spec, (n,), {}), n * n, ttl=600)
        return numbers, [f"bench:cashews:{n}" for n in numbers]

    numbers, names = fresh(max(10, calls // 10))  # warm every path once
    for n, name in zip(numbers, names, strict=True):
        await peer.set(name, n * n, expire=600)
    await ours(numbers)
    rt.cache.clear_local()
    theirs_sync(numbers)
    await cashews(names)
    for repeat in range(repeats):
        numbers, names = fresh(calls)
        for n, name in zip(numbers, names, strict=True):
            await peer.set(name, n * n, expire=600)
        rt.cache.clear_local()
        # Alternate the order, so drift within a repeat hits each side equally.
        if repeat % 2 == 0:
            async_us.append(await ours(numbers))
            rt.cache.clear_local()
            sync_us.append(theirs_sync(numbers))
        else:
            sync_us.append(theirs_sync(numbers))
            rt.cache.clear_local()
            async_us.append(await ours(numbers))
        peer_us.append(await cashews(names))
    await peer.close()
    how = (
        "a fresh key per call written to Redis beforehand; local levels cleared "
        "between passes, untimed; asubmit + aget"
    )
    return [
        ratio_row(
            "async submit answered from Redis vs sync submit of the same keys",
            async_us,
            "submit() + get()",
            sync_us,
            target=1.2,
            note=how,
        ),
        ratio_row(
            "async submit answered from Redis vs cashews get",
            async_us,
            "cashews get (asyncio, same Redis)",
            peer_us,
            target=1.0,
            note=how + "; cashews reads its own key per call",
        ),
    ]


async def _ticking(work: Callable[[], Awaitable[Any]]) -> tuple[Any, float]:
    """``await work()`` while a ticker sleeps :data:`TICK` in a loop; returns the
    result and the ticker's worst overshoot (how long the loop stalled), in ms."""
    worst = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal worst
        while not done.is_set():
            started = time.perf_counter()
            await asyncio.sleep(TICK)
            worst = max(worst, time.perf_counter() - started - TICK)

    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    try:
        result = await work()
    finally:
        done.set()
        await ticking
    return result, worst * 1e3


async def _stampede(trials: int, awaiters: int = 200, compute_ms: int = 200) -> list[Row]:
    import redis

    from tiercel.core.encoding.entry import Entry
    from tiercel.tasks import runtime
    from tiercel.tasks.examples import counted_square

    rt = runtime.current()
    raw = redis.Redis.from_url(rt.settings.cache_url or "")
    computations: list[int] = []
    lags_ms: list[float] = []
    stalls_ms: list[float] = []
    enqueued: list[int] = []
    for _ in range(trials):
        n = random.randrange(10**12)
        counter = f"bench:count:{n}"
        answered: list[float] = []

        async def one(n: int = n, counter: str = counter, answered: list[float] = answered) -> str:
            result = await counted_square.asubmit(n, counter, compute_ms)
            assert await result.aget(timeout=60) == n * n
            answered.append(time.time())
            return result.source

        async def all_of_them(one: Callable[[], Awaitable[str]] = one) -> list[str]:
            return list(await asyncio.gather(*(one() for _ in range(awaiters))))

        sources, stall = await _ticking(all_of_them)
        stalls_ms.append(stall)
        computations.append(int(raw.get(counter) or 0))
        key = rt.key(counted_square.tiercel_spec, (n, counter, compute_ms), {})
        written_at = Entry.unpack(raw.get(key) or b"").stored_at
        lags_ms.extend((stamp - written_at) * 1e3 for stamp in answered)
        enqueued.append(sources.count("computed"))
    raw.close()
    p99 = _percentile(lags_ms, 99)
    worst_stall = max(stalls_ms)
    return [
        figure_row(
            f"async stampede: {awaiters} concurrent asubmit of one cold key, one loop, "
            "2 nodes x 2 processes: computations",
            max(computations),
            "count",
            target="== 1",
            met=all(count == 1 for count in computations),
            note=f"per trial {computations} (counted by the task in Redis); "
            f"tasks enqueued per trial {enqueued}, the rest joined",
        ),
        figure_row(
            "async stampede: awaiters answered after the write, p99",
            p99,
            "ms",
            target="<= 5 ms",
            met=p99 <= 5,
            note=(
                f"p50 {_percentile(lags_ms, 50):.1f} ms, max {max(lags_ms):.1f} ms; "
                f"{trials} trial(s), write time = the entry's stored_at"
            ),
            spread=(min(lags_ms), max(lags_ms)),
        ),
        figure_row(
            "async stampede: worst event-loop stall meanwhile",
            worst_stall,
            "ms",
            target="<= 10 ms",
            met=worst_stall <= 10,
            note=f"overshoot of asyncio.sleep({TICK:g}) in a ticker; per trial "
            + ", ".join(f"{stall:.1f}" for stall in stalls_ms),
            spread=(min(stalls_ms), max(stalls_ms)),
        ),
    ]


async def _many_awaits(repeats: int, requests: int, keys: int) -> list[Row]:
    from tiercel.tasks.examples import slow_square

    async def run_all(one: Callable[[int], Awaitable[None]], numbers: list[int]) -> float:
        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in numbers))
        return time.perf_counter() - started

    def workload() -> list[int]:
        base = random.randrange(10**12)
        numbers = [base + i % keys for i in range(requests)]
        random.shuffle(numbers)
        return numbers

    async_s: list[float] = []
    thread_s: list[float] = []
    async_p99: list[float] = []
    thread_p99: list[float] = []
    for repeat in range(repeats):
        latencies: dict[str, list[float]] = {"async": [], "thread": []}

        async def awaited(n: int, out: list[float] = latencies["async"]) -> None:
            started = time.perf_counter()
            result = await slow_square.asubmit(n, 10)
            assert await result.aget(timeout=120) == n * n
            out.append((time.perf_counter() - started) * 1e3)

        async def threaded(n: int, out: list[float] = latencies["thread"]) -> None:
            started = time.perf_counter()
            value = await asyncio.to_thread(lambda: slow_square.submit(n, 10).get(timeout=120))
            assert value == n * n
            out.append((time.perf_counter() - started) * 1e3)

        sides = [("async", awaited), ("thread", threaded)]
        for side, one in sides if repeat % 2 == 0 else sides[::-1]:
            seconds = await run_all(one, workload())  # cold keys for each side
            (async_s if side == "async" else thread_s).append(seconds)
        async_p99.append(_percentile(latencies["async"], 99))
        thread_p99.append(_percentile(latencies["thread"], 99))
    executor = min(32, (os.cpu_count() or 1) + 4)  # asyncio's default executor size
    ours_rate = requests / statistics.median(async_s)
    peer_rate = requests / statistics.median(thread_s)
    label = f"{requests:,} concurrent awaits over {keys} cold keys, 10 ms compute, one loop"
    peer = f"asyncio.to_thread(submit().get()), {executor} threads"
    return [
        ratio_row(
            f"{label}: time for all",
            async_s,
            peer,
            thread_s,
            unit="s",
            note=f"throughput {ours_rate:,.0f} vs {peer_rate:,.0f} requests/s "
            f"({ours_rate / peer_rate:.2f}x); 2 nodes x 2 processes",
        ),
        ratio_row(
            f"{label}: request latency p99",
            async_p99,
            peer,
            thread_p99,
            unit="ms",
            note=f"p99 ratio {statistics.median(async_p99) / statistics.median(thread_p99):.2f}x",
        ),
    ]


async def _all(quick: bool) -> list[Row]:
    from tiercel.tasks import async_runtime
    from tiercel.tasks.examples import slow_square

    await async_runtime.current()  # the loop's client and subscription, built once
    warm = await slow_square.asubmit(random.randrange(10**12), 1)
    await warm.aget(timeout=60)
    rows = await _redis_answered(3 if quick else 7, 300 if quick else 2000)
    rows.extend(await _stampede(1 if quick else 3))
    rows.extend(await _many_awaits(2 if quick else 3, 300 if quick else 1000, 30 if quick else 100))
    await async_runtime.close()
    return rows


def child(quick: bool) -> list[Row]:
    """Start servers and a 2 x 2 fleet, run every benchmark, return rows (in the child)."""
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
        from tiercel.tasks import runtime
        from tiercel.tasks.examples import noop
        from tiercel.workers.launcher import Fleet, FleetSpec

        two_nodes = FleetSpec(
            workers=2, concurrency=2, beat=False, flower=False, quiet=True, loglevel="ERROR"
        )
        with Fleet(resolve_settings(), two_nodes).running():
            noop.delay().get(timeout=60)
            rows = asyncio.run(_all(quick))
        runtime.shutdown()
        return rows


def run(quick: bool = False) -> list[Row]:
    """Run :func:`child` in a fresh interpreter and return its rows."""
    return run_child("bench.async_submit", quick, timeout=600)


if __name__ == "__main__":
    if "--child" in sys.argv:
        print(json.dumps(child("--quick" in sys.argv)))
    else:
        from bench.report import print_table

        print_table(run("--quick" in sys.argv))
