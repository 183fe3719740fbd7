"""SharedReads: awaiters of one key share a read only when it cannot be stale for them."""

from __future__ import annotations

import asyncio

import pytest

from tiercel.core.cache.async_shared_reads import SharedReads


class Reader:
    """A read that counts its calls and answers when released."""

    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def __call__(self) -> int:
        self.calls += 1
        number = self.calls
        await self.release.wait()
        return number


def test_awaiters_woken_before_a_read_started_share_it() -> None:
    async def main() -> None:
        reads: SharedReads[int] = SharedReads()
        reader = Reader()
        callers = [
            asyncio.ensure_future(reads.read("k", since=3, now=5, read=reader)) for _ in range(200)
        ]
        await asyncio.sleep(0)
        assert reads.running == 1
        reader.release.set()
        assert await asyncio.gather(*callers) == [1] * 200
        assert reader.calls == 1 and reads.running == 0, "forgotten once done"

    asyncio.run(main())


def test_an_awaiter_woken_after_a_read_started_starts_its_own() -> None:
    async def main() -> None:
        reads: SharedReads[int] = SharedReads()
        reader = Reader()
        early = asyncio.ensure_future(reads.read("k", since=1, now=4, read=reader))
        await asyncio.sleep(0)
        late = asyncio.ensure_future(reads.read("k", since=5, now=5, read=reader))
        same_epoch = asyncio.ensure_future(reads.read("k", since=5, now=6, read=reader))
        other_key = asyncio.ensure_future(reads.read("j", since=0, now=6, read=reader))
        await asyncio.sleep(0)
        reader.release.set()
        assert await asyncio.gather(early, late, same_epoch, other_key) == [1, 2, 2, 3]

    asyncio.run(main())


def test_when_the_reader_is_cancelled_the_others_read_again() -> None:
    async def main() -> None:
        reads: SharedReads[int] = SharedReads()
        reader = Reader()
        quitter = asyncio.ensure_future(reads.read("k", since=0, now=0, read=reader))
        stayer = asyncio.ensure_future(reads.read("k", since=0, now=0, read=reader))
        await asyncio.sleep(0)
        quitter.cancel()
        await asyncio.sleep(0)
        reader.release.set()
        assert await stayer == 2 and quitter.cancelled(), "the stayer ran its own read"
        assert reads.running == 0

    asyncio.run(main())


def test_detached_work_finishes_for_the_others_when_its_starter_is_cancelled() -> None:
    async def main() -> None:
        reads: SharedReads[int] = SharedReads()
        reader = Reader()
        quitter = asyncio.ensure_future(reads.run("k", since=0, now=0, work=reader))
        stayer = asyncio.ensure_future(reads.run("k", since=0, now=0, work=reader))
        await asyncio.sleep(0)
        quitter.cancel()
        await asyncio.sleep(0)
        reader.release.set()
        assert await stayer == 1 and reader.calls == 1 and quitter.cancelled()
        assert reads.running == 0

    asyncio.run(main())


def test_an_error_reaches_every_awaiter() -> None:
    async def failing() -> int:
        await asyncio.sleep(0)
        raise ConnectionError("tier down")

    async def main() -> None:
        reads: SharedReads[int] = SharedReads()
        callers = [reads.read("k", since=0, now=0, read=failing) for _ in range(3)]
        outcomes = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)
        assert reads.running == 0

    asyncio.run(main())
    with pytest.raises(ConnectionError):
        asyncio.run(SharedReads[int]().read("k", since=0, now=0, read=failing))
    with pytest.raises(ConnectionError):
        asyncio.run(SharedReads[int]().run("k", since=0, now=0, work=failing))
