"""Single-flight for one event loop: concurrent awaits of one key compute once.

The first caller of a key runs the coroutine; callers arriving while it runs
await the same future and get its result (or its exception). It belongs to
one loop (futures cannot cross loops), so whoever owns it keeps one per loop.
The table holds only keys being computed right now. A follower that is
cancelled stops waiting while the leader's computation goes on for the
others; when the leader is cancelled, its followers start over (one of them
leads).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["AsyncSingleFlight"]


class AsyncSingleFlight:
    """Runs at most one computation per key at a time in this loop."""

    def __init__(self) -> None:
        self._calls: dict[str, asyncio.Future[Any]] = {}
        #: Callers that got another caller's result.
        self.joined = 0

    async def do(self, key: str, fn: Callable[[], Awaitable[Any]]) -> tuple[Any, bool]:
        """``(value, joined)``: ``joined`` is True when another caller computed it."""
        while (running := self._calls.get(key)) is not None:
            self.joined += 1
            try:
                # shield: a follower's cancellation must not cancel the shared future
                return await asyncio.shield(running), True
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if running.cancelled() and task is not None and not task.cancelling():
                    self.joined -= 1
                    continue  # the leader was cancelled, not us: someone computes again
                raise
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[key] = future
        try:
            value = await fn()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here: no "never retrieved" warning without followers
            raise
        else:
            future.set_result(value)
            return value, False
        finally:
            del self._calls[key]

    @property
    def in_flight(self) -> int:
        """Keys being computed right now."""
        return len(self._calls)
