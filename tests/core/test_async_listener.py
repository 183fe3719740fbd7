"""AsyncListener's dispatch: which waiters a channel message wakes, and why."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from tiercel.core.tier import events
from tiercel.core.tier.async_listener import WAKE_RESET, AsyncListener


def listener() -> AsyncListener:
    # Never connected: these tests feed messages by hand.
    return AsyncListener(aioredis.Redis.from_url("redis://127.0.0.1:1/0"), "ns:events")


def test_a_keys_message_wakes_its_waiters_only() -> None:
    async def main() -> tuple[str | None, str | None, int]:
        hub = listener()
        hub.connected = True  # as after a confirmed subscription
        with hub.waiter("a") as a, hub.waiter("b") as b:
            hub._handle({"type": "message", "data": events.Done("a").encode().encode()})
            woke_a = await a.wait(0)
            woke_b = await b.wait(0)
        return woke_a, woke_b, hub.waiting

    assert asyncio.run(main()) == ("d", None, 0)


def test_failed_invalidated_cleared_and_garbled_messages() -> None:
    async def main() -> list[str | None]:
        hub = listener()
        hub.connected = True
        kinds = []
        with hub.waiter("k") as waiter:
            for message in (
                events.Failed("k").encode(),
                events.Invalidated("k").encode(),
                events.Cleared().encode(),
                events.TagInvalidated("t").encode(),
                "garbled",
            ):
                hub._handle({"type": "message", "data": message})
                kinds.append(await waiter.wait(0))
        assert hub.malformed == 1
        return kinds

    assert asyncio.run(main()) == ["f", "i", "i", None, None]


def test_a_resubscription_and_a_stop_wake_everyone() -> None:
    async def main() -> list[str | None]:
        hub = listener()
        kinds = []
        with hub.waiter("k") as waiter:
            hub._handle({"type": "subscribe"})  # the first confirmation: nothing missed
            kinds.append(await waiter.wait(0))
            hub._handle({"type": "subscribe"})  # again: messages may have been missed
            kinds.append(await waiter.wait(0))
            pending = asyncio.ensure_future(waiter.wait(5))
            await asyncio.sleep(0)
            await hub.stop()
            kinds.append(await pending)
        assert hub.reconnects == 1
        return kinds

    assert asyncio.run(main()) == [None, WAKE_RESET, WAKE_RESET]


def test_a_waiter_knows_the_epoch_of_its_last_wake_up() -> None:
    async def main() -> None:
        hub = listener()
        hub.connected = True
        hub._handle({"type": "message", "data": events.Done("other").encode()})
        with hub.waiter("k") as waiter:
            assert waiter.since == hub.epoch == 1, "registered after the first message"
            hub._handle({"type": "message", "data": events.Done("other").encode()})
            assert waiter.since == 1, "another key's message does not wake it"
            hub._handle({"type": "message", "data": events.Done("k").encode()})
            assert waiter.since == hub.epoch == 3

    asyncio.run(main())


def test_a_delivery_probe_reports_its_delay_and_wakes_nobody() -> None:
    import time

    delays: list[float] = []

    async def main() -> str | None:
        hub = AsyncListener(
            aioredis.Redis.from_url("redis://127.0.0.1:1/0"), "ns:events", on_delivery=delays.append
        )
        hub.connected = True
        with hub.waiter("k") as waiter:
            hub._handle(
                {"type": "message", "data": events.ChannelProbe(time.time() - 0.5).encode()}
            )
            hub._handle({"type": "message", "data": events.ChannelProbe(time.time() + 60).encode()})
            woke = await waiter.wait(0)
        assert hub.malformed == 0
        return woke

    assert asyncio.run(main()) is None
    assert len(delays) == 2
    assert 0.5 <= delays[0] < 5.0
    assert delays[1] == 0.0, "a sender's clock ahead of ours reads as no delay"


def test_a_failing_delivery_handler_is_counted_not_raised() -> None:
    def explode(seconds: float) -> None:
        raise RuntimeError("handler bug")

    hub = AsyncListener(
        aioredis.Redis.from_url("redis://127.0.0.1:1/0"), "ns:events", on_delivery=explode
    )
    hub._handle({"type": "message", "data": events.ChannelProbe(1.0).encode()})
    assert hub.handler_errors == 1 and hub.received == 1
