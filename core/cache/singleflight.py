"""Per-process single-flight: concurrent misses for one key compute once.

The first caller of a key runs the computation; callers arriving while it
runs wait on an event and get its result (or its exception). The table holds
only keys being computed right now, so it is bounded by the number of
concurrent callers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class _Call:
    __slots__ = ("done", "error", "value", "waiters")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.waiters = 0


class SingleFlight:
    """Runs at most one ``fn`` per key at a time in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, _Call] = {}
        self.joined = 0

    def do(self, key: str, fn: Callable[[], Any]) -> tuple[Any, bool]:
        """Return ``(value, joined)``: ``joined`` is True when another caller computed it."""
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if call is None:
                call = self._calls[key] = _Call()
            else:
                call.waiters += 1
                self.joined += 1
        if not leader:
            call.done.wait()
            if call.error is not None:
                raise call.error
            return call.value, True
        try:
            call.value = fn()
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()
        return call.value, False

    @property
    def in_flight(self) -> int:
        """Keys being computed right now."""
        with self._lock:
            return len(self._calls)
