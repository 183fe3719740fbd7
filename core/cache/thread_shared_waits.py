"""Threads of one process waiting on one pending computation share one wait for it.

50 threads of a client that joined one task each wait for the same value.
Waiting apart, the write's message wakes all 50; one reads the value (shared,
see :mod:`tiercel.core.cache.thread_shared_reads`) while the other 49 go back
to sleep until it answers, then wake a second time: two rounds of waking 50
threads, each round as slow as the machine wakes threads (tens of
microseconds a thread, under the GIL).

With :class:`ThreadSharedWaits` the first thread to wait *leads*: it alone
waits on the channel and reads; the others wait on the leader's answer and
are woken once, with the value in hand.

The leader's answer is shared only when it is a value. When the leader
raises (the task failed, or its own shorter timeout ran out) or returns
nothing usable, each follower runs its own wait for the time it has left, as
it would have without sharing: sharing never changes an answer, only how
many threads wait on the channel. Bounded: one wait per key, remembered while
its leader waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar, cast

from tiercel.core.missing import MISSING

__all__ = ["ThreadSharedWaits"]

T = TypeVar("T")


class _Wait:
    __slots__ = ("answer", "done")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.answer: Any = MISSING  # stays MISSING when the leader raised


class ThreadSharedWaits(Generic[T]):
    """One leader per key waits; the threads that join it take its answer."""

    __slots__ = ("_lock", "_running", "shared")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[Hashable, _Wait] = {}
        #: Answers taken from a leader instead of a wait of their own.
        self.shared = 0

    def wait(self, key: Hashable, timeout: float | None, wait: Callable[[float | None], T]) -> T:
        """``wait(timeout)``, run by this thread as the leader of ``key``, or the answer
        of the leader already waiting (raising and timing out as ``wait`` would)."""
        with self._lock:
            running = self._running.get(key)
            lead = running is None
            if running is None:
                running = self._running[key] = _Wait()
        if lead:
            try:
                answer = wait(timeout)
                running.answer = answer
                return answer
            finally:
                with self._lock:
                    if self._running.get(key) is running:
                        del self._running[key]
                running.done.set()
        started = time.monotonic()
        if running.done.wait(timeout) and running.answer is not MISSING:
            with self._lock:
                self.shared += 1
            return cast(T, running.answer)
        # The leader raised or left first: wait alone, for the time left.
        left = None if timeout is None else max(0.0, timeout - (time.monotonic() - started))
        return wait(left)

    @property
    def running(self) -> int:
        """Keys with a leader waiting right now."""
        return len(self._running)
