"""Awaiters of one key in one loop share one read, when it cannot be stale for them.

When a computation's value is written, the listener wakes every awaiter of its
key at once: 200 requests awaiting one cold key would each send their own GET
(and their own result-backend check), so the loop spends its next tens of
milliseconds on 200 identical round trips while the 200th answer waits. A
:class:`SharedReads` lets them share one.

Sharing is safe only with a read issued after what the joiner must see. The
listener counts every message it receives (its ``epoch``); a read records the
epoch at which it started, and an awaiter the epoch at which it registered or
was last woken. A joiner woken at epoch ``e`` shares only a read started at
epoch ``e`` or later: issued after the wake-up's message arrived, so after the
write that message announces (Redis serves one connection's commands in order
and publishes after writing). An older read runs on for whoever started it;
the joiner starts a new one.

Bounded: at most one read per key is remembered, and only while it runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar, cast

from tiercel.core.missing import MISSING

__all__ = ["SharedReads"]

T = TypeVar("T")


class SharedReads(Generic[T]):
    """One in-flight read per key, shared by callers that may use its answer.

    :meth:`read` runs the read in the first caller's own task (no task or future
    more than a lone caller needs); :meth:`run` runs it detached, so that a first
    caller cancelled meanwhile does not stop what the others wait for.
    """

    __slots__ = ("_running",)

    def __init__(self) -> None:
        self._running: dict[str, tuple[int, asyncio.Future[Any]]] = {}

    async def read(self, key: str, since: int, now: int, read: Callable[[], Awaitable[T]]) -> T:
        """The answer of a read of ``key`` started at epoch ``since`` or later: the one
        running, else ``read()``, run by this caller (started at epoch ``now``).

        Should the caller running the read be cancelled, the others run it again."""
        while True:
            running = self._running.get(key)
            if running is None or running[0] < since:
                return await self._lead(key, now, read)
            answer = await asyncio.shield(running[1])
            if answer is not MISSING:
                return cast(T, answer)

    async def run(self, key: str, since: int, now: int, work: Callable[[], Awaitable[T]]) -> T:
        """As :meth:`read`, but ``work()`` runs detached: it finishes for the others even
        if the caller that started it is cancelled."""
        running = self._running.get(key)
        if running is None or running[0] < since:
            future: asyncio.Future[Any] = asyncio.ensure_future(work())
            running = (now, future)
            self._running[key] = running
            future.add_done_callback(lambda done: self._forget(key, done))
        return cast(T, await asyncio.shield(running[1]))

    @property
    def running(self) -> int:
        """Reads in flight right now."""
        return len(self._running)

    async def _lead(self, key: str, now: int, read: Callable[[], Awaitable[T]]) -> T:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._running[key] = (now, future)
        try:
            answer = await read()
        except asyncio.CancelledError:
            future.set_result(MISSING)  # no answer: the others read again themselves
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: whoever waits re-raises it, nobody logs it
            raise
        else:
            future.set_result(answer)
            return answer
        finally:
            if self._running.get(key, (0, None))[1] is future:
                del self._running[key]

    def _forget(self, key: str, done: asyncio.Future[Any]) -> None:
        running = self._running.get(key)
        if running is not None and running[1] is done:
            del self._running[key]
        if not done.cancelled():
            done.exception()  # retrieved: an error reaches every caller, not the log
