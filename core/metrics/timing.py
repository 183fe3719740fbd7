"""Timing a block or every call of a function into a latency sketch.

A coroutine function is timed from its call until its coroutine finishes (the
awaits inside count); a plain function stays a plain function.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, cast

from tiercel.core.metrics.sketches import LatencySketch

__all__ = ["BlockTimer", "time_calls"]

P = ParamSpec("P")
R = TypeVar("R")


class BlockTimer:
    """A reusable (not reentrant) context manager timing its block into a sketch.

    :meth:`~tiercel.core.metrics.registry.MetricsRegistry.timer` returns one.
    ``async with`` works too, for a block that awaits (the same clock readings).
    """

    __slots__ = ("_clock", "_sketch", "_started", "elapsed")

    def __init__(self, sketch: LatencySketch, clock: Callable[[], float]) -> None:
        self._sketch = sketch
        self._clock = clock
        self._started = 0.0
        #: Seconds the last timed block took (0.0 before it ends).
        self.elapsed = 0.0

    def __enter__(self) -> BlockTimer:
        self._started = self._clock()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A failing block is timed too: slow failures are latency users saw.
        self.elapsed = max(0.0, self._clock() - self._started)
        self._sketch.add(self.elapsed)

    async def __aenter__(self) -> BlockTimer:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def time_calls(
    fn: Callable[P, R], sketch: LatencySketch, clock: Callable[[], float]
) -> Callable[P, R]:
    """``fn``, recording how long each call takes (raised or returned) in ``sketch``.

    For a coroutine function the wrapper is one too, and the time runs until the
    coroutine returns or raises, not until it is created.
    """
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def awaiting(*args: P.args, **kwargs: P.kwargs) -> Any:
            started = clock()
            try:
                return await fn(*args, **kwargs)
            finally:
                sketch.add(max(0.0, clock() - started))

        return cast("Callable[P, R]", awaiting)

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        started = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            sketch.add(max(0.0, clock() - started))

    return wrapper
