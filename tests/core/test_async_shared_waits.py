"""SharedWaits: awaiters of one pending computation share one wait, each with its timeout."""

from __future__ import annotations

import asyncio

import pytest

from tiercel.core.cache.async_shared_waits import SharedWaits


class Wait:
    """A wait that counts its starts, answers when released, and notes a cancellation."""

    def __init__(self) -> None:
        self.starts = 0
        self.cancelled = 0
        self.release = asyncio.Event()

    async def __call__(self) -> str:
        self.starts += 1
        number = self.starts
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return f"value {number}"


def test_concurrent_awaiters_share_one_wait() -> None:
    async def main() -> None:
        waits: SharedWaits[str] = SharedWaits()
        wait = Wait()
        callers = [asyncio.ensure_future(waits.wait("k", wait, None)) for _ in range(200)]
        await asyncio.sleep(0.01)
        assert waits.running == 1 and wait.starts == 1
        wait.release.set()
        assert await asyncio.gather(*callers) == ["value 1"] * 200
        assert waits.running == 0, "forgotten once done"
        assert await waits.wait("k", wait, None) == "value 2", "a later wait starts anew"

    asyncio.run(main())


def test_keys_wait_apart() -> None:
    async def main() -> None:
        waits: SharedWaits[str] = SharedWaits()
        first, second = Wait(), Wait()
        a = asyncio.ensure_future(waits.wait(("key", "task-1"), first, None))
        b = asyncio.ensure_future(waits.wait(("key", "task-2"), second, None))
        await asyncio.sleep(0)
        assert waits.running == 2
        second.release.set()
        assert await b == "value 1" and not a.done()
        first.release.set()
        assert await a == "value 1"

    asyncio.run(main())


def test_a_timeout_ends_one_awaiter_not_the_wait() -> None:
    async def main() -> None:
        waits: SharedWaits[str] = SharedWaits()
        wait = Wait()
        patient = asyncio.ensure_future(waits.wait("k", wait, None))
        with pytest.raises(TimeoutError):
            await waits.wait("k", wait, 0.01)
        assert not patient.done() and wait.cancelled == 0
        wait.release.set()
        assert await patient == "value 1" and wait.starts == 1

    asyncio.run(main())


def test_the_wait_is_cancelled_when_its_last_awaiter_leaves() -> None:
    async def main() -> None:
        waits: SharedWaits[str] = SharedWaits()
        wait = Wait()
        callers = [asyncio.ensure_future(waits.wait("k", wait, None)) for _ in range(3)]
        await asyncio.sleep(0)
        callers[0].cancel()
        await asyncio.sleep(0)
        assert wait.cancelled == 0, "two still wait"
        with pytest.raises(TimeoutError):
            await asyncio.gather(*(waits.wait("k", wait, 0.01) for _ in range(2)))
        for caller in callers[1:]:
            caller.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
        await asyncio.sleep(0)
        assert wait.cancelled == 1 and waits.running == 0
        wait.release.set()
        assert await waits.wait("k", wait, None) == "value 2", "a newcomer starts its own"

    asyncio.run(main())


def test_an_error_reaches_every_awaiter() -> None:
    async def main() -> None:
        waits: SharedWaits[str] = SharedWaits()

        async def failing() -> str:
            await asyncio.sleep(0)
            raise LookupError("no such task")

        results = await asyncio.gather(
            *(waits.wait("k", failing, None) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(result, LookupError) for result in results)
        assert waits.running == 0

    asyncio.run(main())
