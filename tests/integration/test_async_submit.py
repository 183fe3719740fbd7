"""``await task.asubmit(...)`` and ``await result.aget(...)`` against real worker processes.

The module's fleet is 2 prefork nodes x 2 processes (tests/integration/conftest.py);
computations are counted by the task itself (an INCR in Redis).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis
from celery.exceptions import TimeoutError as CeleryTimeoutError

import tiercel
from tiercel.tasks.examples import counted_square
from tiercel.workers.launcher import Fleet

pytestmark = pytest.mark.integration


def fresh() -> tuple[int, str]:
    n = uuid.uuid4().int % 10**9
    return n, f"test:count:aio:{n}"


def run(main: Any) -> Any:
    async def wrapped() -> Any:
        try:
            return await main()
        finally:
            await tiercel.aclose()

    return asyncio.run(wrapped())


def test_a_local_or_redis_value_is_answered_without_enqueueing(cache_client: redis.Redis) -> None:
    # No fleet needed: the value is computed in this process first.
    from celery import signals

    n, counter = fresh()
    assert counted_square.cached_call(n, counter, 0) == n * n
    published: list[str] = []

    def count(sender: Any = None, **_: Any) -> None:
        published.append(str(sender))

    async def main() -> list[Any]:
        from tiercel.tasks import runtime

        await counted_square.asubmit(n, counter, 0)  # promoted into the levels if not there
        local = await counted_square.asubmit(n, counter, 0)

        runtime.current().cache.clear_local()
        remote = await counted_square.asubmit(n, counter, 0)
        return [local, remote, await local.aget(timeout=1), await remote]

    signals.before_task_publish.connect(count, weak=False)
    try:
        local, remote, local_value, remote_value = run(main)
    finally:
        signals.before_task_publish.disconnect(count)
    assert published == []
    assert (local.source, local.task_id, local_value) == ("memory", None, n * n)
    assert (remote.source, remote.task_id, remote_value) == ("redis", None, n * n)


def test_concurrent_asubmits_of_a_cold_key_publish_one_task(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    from celery import signals

    n, counter = fresh()
    published: list[str] = []

    def count(sender: Any = None, **_: Any) -> None:
        published.append(str(sender))

    async def main() -> tuple[list[Any], list[Any]]:
        results = await asyncio.gather(
            *(counted_square.asubmit(n, counter, 300) for _ in range(40))
        )
        values = await asyncio.gather(*(result.aget(timeout=30) for result in results))
        return list(results), list(values)

    signals.before_task_publish.connect(count, weak=False)
    try:
        results, values = run(main)
    finally:
        signals.before_task_publish.disconnect(count)
    assert values == [n * n] * 40
    assert published == ["tiercel.tasks.examples.counted_square"]
    sources = [result.source for result in results]
    assert sources.count("computed") == 1 and sources.count("joined") == 39
    assert int(cache_client.get(counter) or 0) == 1


def test_the_first_submitter_cancelled_mid_claim_still_publishes_for_the_others(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    # The first asubmit of a key claims it for all of the loop's submitters: cancelled
    # while its claim runs, it must not leave the key claimed for a task never published.
    n, counter = fresh()

    async def main() -> tuple[bool, list[Any]]:
        from tiercel.tasks import async_runtime

        first = asyncio.ensure_future(counted_square.asubmit(n, counter, 100))
        loop = await async_runtime.current()
        while not loop.claims.running:  # until the first has started the shared claim
            await asyncio.sleep(0)
        others = [asyncio.ensure_future(counted_square.asubmit(n, counter, 100)) for _ in range(9)]
        await asyncio.sleep(0)
        first.cancel()
        results = await asyncio.gather(*others)
        values = await asyncio.gather(*(result.aget(timeout=30) for result in results))
        return first.cancelled(), [
            (result.source, value) for result, value in zip(results, values, strict=True)
        ]

    cancelled, answers = run(main)
    assert cancelled
    assert answers == [("joined", n * n)] * 9, "the cancelled submitter's task was published"
    assert int(cache_client.get(counter) or 0) == 1


def test_await_result_and_a_timeout_as_the_sync_api_raises(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    n, counter = fresh()

    async def main() -> tuple[list[str], list[Any], Any]:
        pending = await counted_square.asubmit(n, counter, 1500)
        joined = [await counted_square.asubmit(n, counter, 1500) for _ in range(3)]
        late = await counted_square.asubmit(n, counter, 1500)  # pending: read after the write
        outcomes: list[str] = []

        async def impatient(result: Any, timeout: float) -> None:
            try:
                await result.aget(timeout=timeout)
            except CeleryTimeoutError:
                outcomes.append(f"timed out after {timeout}")

        # Awaiters of one computation share one wait, each with its own timeout: those
        # that give up leave the others waiting.
        patient = asyncio.gather(*(result.aget(timeout=30) for result in joined))
        await asyncio.gather(impatient(pending, 0.2), impatient(late, 0))
        values = await patient
        return outcomes, [*values, await pending, await late.aget(timeout=0)], late.source

    outcomes, values, late_source = run(main)
    assert sorted(outcomes) == ["timed out after 0", "timed out after 0.2"]
    assert values == [n * n] * 5, "no timeout, or 0 once written: the value"
    assert late_source == "joined"
    assert int(cache_client.get(counter) or 0) == 1


def test_a_failing_task_raises_from_aget_as_from_get(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    n, counter = fresh()
    with pytest.raises(Exception) as sync_error:
        counted_square.submit(n, counter, 10, True).get(timeout=30)

    async def main() -> BaseException:
        pending = await counted_square.asubmit(n, counter, 10, True)
        try:
            await pending.aget(timeout=30)
        except Exception as exc:
            return exc
        raise AssertionError("a failing task answered a value")

    error = run(main)
    assert type(error) is type(sync_error.value)


def test_a_task_message_the_broker_lost_is_republished_by_its_awaiter(fleet: Fleet) -> None:
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

    async def main() -> Any:
        return await result.aget(timeout=30)

    assert run(main) == n * n
    assert published == [lost]  # once: the re-published task then computed it
