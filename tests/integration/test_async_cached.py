"""``tiercel.cached`` on an ``async def``: real Redis, redis.asyncio, one loop or several."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

import tiercel
from tiercel.core.errors import SettingsError
from tiercel.core.tier.async_connections import async_client_from_url
from tiercel.tasks import async_runtime, runtime

pytestmark = pytest.mark.integration


def unique(prefix: str) -> str:
    return f"tests.aio.{prefix}.{uuid.uuid4().hex[:8]}"


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``main`` in a new loop, closing that loop's tiercel state afterwards."""

    async def wrapped() -> Any:
        try:
            return await main()
        finally:
            await tiercel.aclose()

    return asyncio.run(wrapped())


def test_an_async_def_is_cached_through_the_levels_and_redis(
    cache_url: str, redis_client: redis.Redis
) -> None:
    computed: list[int] = []

    @tiercel.cached(ttl=60, name=unique("square"))
    async def square(n: int) -> int:
        await asyncio.sleep(0)
        computed.append(n)
        return n * n

    async def main() -> list[Any]:
        first = await square.lookup(7)
        second = await square.lookup(7)
        value = await square(7)
        key = runtime.current().key(square.spec, (7,), {})
        in_redis = redis_client.exists(key)
        runtime.current().cache.clear_local()
        from_redis = await square.lookup(7)
        return [first, second, value, in_redis, from_redis]

    first, second, value, in_redis, from_redis = run(main)
    assert (first.value, first.source) == (49, "computed")
    assert (second.value, second.source) == (49, "memory")
    assert value == 49
    assert in_redis == 1
    assert (from_redis.value, from_redis.source) == (49, "redis")
    assert computed == [7]


def test_a_local_hit_awaits_nothing_on_redis(cache_url: str) -> None:
    @tiercel.cached(ttl=60, name=unique("local"))
    async def echo(text: str) -> str:
        return text

    async def main() -> str:
        await echo("warm")
        loop_runtime = await async_runtime.current()

        async def no_redis(key: str) -> Any:
            raise AssertionError(f"a local hit read Redis for {key}")

        loop_runtime.tier.get_entry = no_redis  # type: ignore[method-assign]
        found = await echo.lookup("warm")
        return str(found.source)

    assert run(main) == "memory"


def test_concurrent_awaits_of_one_key_compute_once_per_loop(cache_url: str) -> None:
    computed: list[int] = []

    @tiercel.cached(ttl=60, name=unique("slow"))
    async def slow(n: int) -> int:
        computed.append(n)
        await asyncio.sleep(0.2)
        return n + 1

    async def main() -> list[Any]:
        found = await asyncio.gather(*(slow.lookup(1) for _ in range(50)))
        return [found, await slow.stats()]

    found, stats = run(main)
    assert computed == [1]
    assert {lookup.value for lookup in found} == {2}
    sources = sorted(lookup.source for lookup in found)
    assert sources.count("computed") == 1 and sources.count("joined") == 49
    assert stats["joined"] >= 49 and stats["computed"] >= 1


def test_concurrent_loops_compute_once_per_fleet_under_one_lease(cache_url: str) -> None:
    # Two loops in two threads have their own clients, listeners and single-flight:
    # only the key's fenced lease in Redis keeps them to one computation. No local
    # levels, so neither can see the other's value except through Redis.
    name = unique("fleet")
    computed: list[str] = []
    lock = threading.Lock()

    @tiercel.cached(ttl=60, name=name, levels=(), version="1")
    async def shared(n: int) -> str:
        with lock:
            computed.append(threading.current_thread().name)
        await asyncio.sleep(0.5)
        return f"value {n}"

    barrier = threading.Barrier(2)
    answers: dict[str, list[Any]] = {}

    def loop_thread(label: str) -> None:
        async def main() -> list[Any]:
            await async_runtime.current()  # client and listener up before racing
            barrier.wait(10)
            return list(await asyncio.gather(*(shared.lookup(3) for _ in range(10))))

        answers[label] = run(main)

    threads = [threading.Thread(target=loop_thread, args=(label,)) for label in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(computed) == 1, computed
    found = answers["a"] + answers["b"]
    assert {lookup.value for lookup in found} == {"value 3"}
    sources = [lookup.source for lookup in found]
    assert sources.count("computed") == 1
    assert sources.count("joined") == 19


def test_a_blocking_caller_joins_an_async_holder(cache_url: str) -> None:
    # The same function name and version in sync code: one key, one lease.
    name = unique("mixed")
    ran: list[str] = []

    @tiercel.cached(ttl=60, name=name, levels=(), version="1")
    async def fetch(n: int) -> str:
        ran.append("async")
        await asyncio.sleep(0.5)
        return f"async {n}"

    @tiercel.cached(ttl=60, name=name, levels=(), version="1")
    def fetch_sync(n: int) -> str:
        ran.append("sync")
        return f"sync {n}"

    blocking: list[Any] = []

    async def main() -> Any:
        holder = asyncio.ensure_future(fetch.lookup(5))
        await asyncio.sleep(0.15)  # the async caller holds the lease by now
        thread = threading.Thread(target=lambda: blocking.append(fetch_sync.lookup(5)))
        thread.start()
        found = await holder
        await asyncio.to_thread(thread.join, 10)
        return found

    found = run(main)
    assert ran == ["async"]
    assert (found.value, found.source) == ("async 5", "computed")
    assert blocking[0].value == "async 5" and blocking[0].source == "joined"


def test_invalidation_by_key_tag_and_version(cache_url: str) -> None:
    computed: list[int] = []

    @tiercel.cached(ttl=60, name=unique("inv"), tags=("reports",))
    async def report(n: int) -> int:
        computed.append(n)
        return n

    async def main() -> list[str]:
        sources = []
        await report(1)
        sources.append((await report.lookup(1)).source)
        await report.invalidate(1)
        sources.append((await report.lookup(1)).source)
        removed = await report.invalidate_tag("reports")
        assert removed >= 1
        sources.append((await report.lookup(1)).source)
        await report.invalidate_all()
        sources.append((await report.lookup(1)).source)
        sources.append((await report.lookup(1)).source)
        return sources

    assert run(main) == ["memory", "computed", "computed", "computed", "memory"]
    assert computed == [1, 1, 1, 1]


def test_a_failure_reaches_every_awaiter_and_is_not_cached(cache_url: str) -> None:
    calls: list[int] = []

    @tiercel.cached(ttl=60, name=unique("fails"))
    async def flaky(n: int) -> int:
        calls.append(n)
        await asyncio.sleep(0.1)
        if len(calls) == 1:
            raise RuntimeError("first computation fails")
        return n

    async def main() -> list[Any]:
        failed = await asyncio.gather(*(flaky(2) for _ in range(5)), return_exceptions=True)
        return [failed, await flaky(2)]

    failed, value = run(main)
    assert all(isinstance(error, RuntimeError) for error in failed)
    assert len({id(error) for error in failed}) == 1
    assert value == 2 and calls == [2, 2]


def test_the_async_client_refuses_urls_it_cannot_serve() -> None:
    with pytest.raises(SettingsError, match="single Redis servers"):
        async_client_from_url("redis+cluster://127.0.0.1:7000")


def test_a_stale_value_is_served_while_one_refresh_runs(cache_url: str) -> None:
    computed: list[int] = []

    @tiercel.cached(ttl=0.2, stale_ttl=60, name=unique("stale"))
    async def quote(n: int) -> int:
        computed.append(n)
        if len(computed) > 1:
            await asyncio.sleep(0.2)  # the refresh is still running while readers arrive
        return len(computed)

    async def main() -> list[Any]:
        first = await quote(1)
        await asyncio.sleep(0.3)  # past ttl, inside stale_ttl
        served = await asyncio.gather(*(quote(1) for _ in range(5)))
        after = None
        for _ in range(100):  # the refresh runs in a task of this loop
            after = await quote(1)
            if after == 2:
                break
            await asyncio.sleep(0.02)
        return [first, served, after]

    first, served, after = run(main)
    assert first == 1
    assert list(served) == [1] * 5, "the stale value answers at once"
    assert after == 2
    assert computed == [1, 1], "one refresh, however many readers"


_ASYNC_PROCESS = """
import asyncio, sys
import redis
import tiercel

name, counter, ready, go = sys.argv[1:5]
control = redis.Redis.from_url(sys.argv[5])

@tiercel.cached(ttl=60, name=name, version="1")
async def shared(n):
    control.incr(counter)
    await asyncio.sleep(0.5)
    return n * 3

async def main():
    from tiercel.tasks import async_runtime
    await async_runtime.current()
    control.incr(ready)
    await asyncio.to_thread(control.blpop, [go], 30)
    found = await asyncio.gather(*(shared.lookup(14) for _ in range(10)))
    await tiercel.aclose()
    return found

print(",".join(f"{f.value}:{f.source}" for f in asyncio.run(main())))
"""


def test_processes_awaiting_one_key_compute_it_once(
    cache_url: str, redis_client: redis.Redis
) -> None:
    import os
    import subprocess
    import sys
    import time

    name, tag = unique("procs"), uuid.uuid4().hex[:8]
    counter, ready, go = f"test:aio:count:{tag}", f"test:aio:ready:{tag}", f"test:aio:go:{tag}"
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _ASYNC_PROCESS, name, counter, ready, go, cache_url],
            env={**os.environ, "TIERCEL_NAMESPACE": f"aio-{tag}"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    deadline = time.monotonic() + 60
    while int(redis_client.get(ready) or 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # both processes connected and listening
    redis_client.rpush(go, "go", "go")
    answers = []
    for child in children:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err[-2000:]
        answers += out.strip().split(",")
    assert len(answers) == 20
    assert all(answer.startswith("42:") for answer in answers), answers
    assert answers.count("42:computed") == 1, answers
    assert int(redis_client.get(counter) or 0) == 1
