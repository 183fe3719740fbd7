"""Threads waiting on one key share one read of it, when it cannot be stale for them.

When a computation's value is written, the notifier wakes every thread waiting
for its key at once. 50 threads of one process waiting on a cold key would each
send their own GET, queue for the pool's connections and decode the same value
50 times under the GIL: the last answer comes tens of milliseconds after the
first. A :class:`ThreadSharedReads` lets them share one read.

The rule is :mod:`tiercel.core.cache.async_shared_reads`'s, with the notifier's
``epoch`` (it counts every wake-up it delivers): a waiter woken at epoch ``e``
shares only a read started at epoch ``e`` or later, that is issued after the
message that woke it arrived, so after the write it announces. An older read
runs on for whoever started it; the newcomer starts its own.

Bounded: at most one read per key is remembered, and only while it runs. A
thread that shares waits at most :data:`SHARE_WAIT` seconds for the answer
(the read is bounded by the tier's own timeouts long before that), then reads
for itself, as it does when the shared read raised.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar, cast

from tiercel.core.missing import MISSING

__all__ = ["SHARE_WAIT", "ThreadSharedReads"]

T = TypeVar("T")

#: The longest a thread waits for a read another one runs, in seconds.
SHARE_WAIT: Final = 5.0


class _Read:
    __slots__ = ("answer", "done", "epoch")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.done = threading.Event()
        self.answer: Any = MISSING  # MISSING once done: the read raised


class ThreadSharedReads(Generic[T]):
    """One in-flight read per key, shared by the threads that may use its answer."""

    __slots__ = ("_lock", "_running")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, _Read] = {}

    def read(self, key: str, since: int, now: int, read: Callable[[], T]) -> T:
        """The answer of a read of ``key`` started at epoch ``since`` or later: the one
        running, else ``read()``, run by this thread (started at epoch ``now``)."""
        with self._lock:
            running = self._running.get(key)
            lead = running is None or running.epoch < since
            if lead:
                running = self._running[key] = _Read(now)
        assert running is not None
        if not lead:
            if running.done.wait(SHARE_WAIT) and running.answer is not MISSING:
                return cast(T, running.answer)
            return read()  # it raised, or took too long: read for ourselves
        try:
            running.answer = read()
            return cast(T, running.answer)
        finally:
            with self._lock:
                if self._running.get(key) is running:
                    del self._running[key]
            running.done.set()

    @property
    def running(self) -> int:
        """Reads in flight right now."""
        return len(self._running)
