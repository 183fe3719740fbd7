"""Awaiters of one pending computation in one loop share one wait for it.

200 requests of a cold key that joined one task each wait for the same value.
Waiting apart, the write wakes 200 waiters; each runs its loop once more (a
step of its own to notice the wake-up, a read, a step to take the answer),
so the 200th answer comes 400 task steps after the write. Sharing one wait,
the write wakes one waiter, its read answers, and the other 199 are resumed
by one future: the last answer comes about 200 cheap resumptions later.

:class:`SharedWaits` runs the wait in a task of its own, joined by every
caller of one key with its own timeout. A caller that times out or is
cancelled leaves; when the last one leaves, the wait is cancelled, so nothing
waits on for nobody. Bounded: one wait per key, remembered while it runs.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

__all__ = ["SharedWaits"]

T = TypeVar("T")


class _Wait(Generic[T]):
    __slots__ = ("joiners", "task")

    def __init__(self, task: asyncio.Task[T]) -> None:
        self.task = task
        #: One future per caller waiting, answered together when the task ends.
        self.joiners: set[asyncio.Future[T]] = set()


def _expire(joiner: asyncio.Future[Any]) -> None:
    if not joiner.done():
        joiner.set_exception(TimeoutError())


class SharedWaits(Generic[T]):
    """One running wait per key, shared by every caller of that key."""

    __slots__ = ("_running",)

    def __init__(self) -> None:
        self._running: dict[Hashable, _Wait[T]] = {}

    async def wait(
        self,
        key: Hashable,
        start: Callable[[], Coroutine[Any, Any, T]],
        timeout: float | None,
    ) -> T:
        """The answer of the wait running for ``key``, else of ``start()``, begun now.

        Raises :class:`TimeoutError` after ``timeout`` seconds (None: no limit)
        without stopping the wait for the others; an error of the wait reaches
        every caller.
        """
        running = self._running.get(key)
        if running is None:
            running = self._running[key] = _Wait(asyncio.ensure_future(start()))
            running.task.add_done_callback(functools.partial(self._finished, key, running))
        loop = asyncio.get_running_loop()
        # Each caller awaits a future of its own, answered by the task's end (no shield,
        # no timeout context: the fewest steps between the answer and 200 callers).
        joiner: asyncio.Future[T] = loop.create_future()
        running.joiners.add(joiner)
        timer = None if timeout is None else loop.call_later(timeout, _expire, joiner)
        try:
            return await joiner
        finally:
            if timer is not None:
                timer.cancel()
            running.joiners.discard(joiner)
            if not running.joiners and not running.task.done():
                # Nobody waits for it any more; a caller arriving later starts anew.
                if self._running.get(key) is running:
                    del self._running[key]
                running.task.cancel()

    @property
    def running(self) -> int:
        """Waits in progress right now."""
        return len(self._running)

    def _finished(self, key: Hashable, running: _Wait[T], task: asyncio.Task[T]) -> None:
        if self._running.get(key) is running:
            del self._running[key]
        if task.cancelled():
            for joiner in running.joiners:
                joiner.cancel()
            return
        error = task.exception()  # retrieved: an error reaches every caller, not the log
        for joiner in running.joiners:
            if joiner.done():
                continue
            if error is not None:
                joiner.set_exception(error)
            else:
                joiner.set_result(task.result())
