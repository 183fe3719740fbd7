"""AsyncSingleFlight: one computation per key in a loop, its outcome shared."""

from __future__ import annotations

import asyncio

import pytest

from tiercel.core.cache.async_singleflight import AsyncSingleFlight


def test_concurrent_callers_share_one_computation() -> None:
    flight = AsyncSingleFlight()
    runs: list[int] = []

    async def compute() -> str:
        runs.append(1)
        await asyncio.sleep(0.01)
        return "value"

    async def main() -> list[tuple[str, bool]]:
        return list(await asyncio.gather(*(flight.do("k", compute) for _ in range(10))))

    results = asyncio.run(main())
    assert runs == [1]
    assert [joined for _, joined in results].count(False) == 1
    assert {value for value, _ in results} == {"value"}
    assert flight.joined == 9 and flight.in_flight == 0


def test_an_exception_reaches_every_caller_and_is_not_kept() -> None:
    flight = AsyncSingleFlight()

    async def fails() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("boom")

    async def main() -> list[object]:
        return list(
            await asyncio.gather(*(flight.do("k", fails) for _ in range(3)), return_exceptions=True)
        )

    errors = asyncio.run(main())
    assert all(isinstance(error, ValueError) for error in errors)
    assert flight.in_flight == 0


def test_a_cancelled_follower_leaves_the_computation_to_the_others() -> None:
    flight = AsyncSingleFlight()

    async def compute() -> str:
        await asyncio.sleep(0.05)
        return "done"

    async def main() -> tuple[tuple[str, bool], bool]:
        leader = asyncio.ensure_future(flight.do("k", compute))
        await asyncio.sleep(0)
        follower = asyncio.ensure_future(flight.do("k", compute))
        await asyncio.sleep(0.01)
        follower.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follower
        return await leader, follower.cancelled()

    (value, joined), cancelled = asyncio.run(main())
    assert (value, joined, cancelled) == ("done", False, True)


def test_followers_of_a_cancelled_leader_start_over() -> None:
    flight = AsyncSingleFlight()
    runs: list[int] = []

    async def compute() -> str:
        runs.append(1)
        await asyncio.sleep(0.05)
        return "done"

    async def main() -> tuple[str, bool]:
        leader = asyncio.ensure_future(flight.do("k", compute))
        await asyncio.sleep(0)
        follower = asyncio.ensure_future(flight.do("k", compute))
        await asyncio.sleep(0.01)
        leader.cancel()
        result: tuple[str, bool] = await follower
        return result

    assert asyncio.run(main()) == ("done", False)
    assert len(runs) == 2
