"""Timing a block or every call of a function into a latency sketch."""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import TracebackType
from typing import ParamSpec, TypeVar

from tiercel.core.metrics.sketches import LatencySketch

__all__ = ["BlockTimer", "time_calls"]

P = ParamSpec("P")
R = TypeVar("R")


class BlockTimer:
    """A reusable (not reentrant) context manager timing its block into a sketch.

    :meth:`~tiercel.core.metrics.registry.MetricsRegistry.timer` returns one.
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


def time_calls(
    fn: Callable[P, R], sketch: LatencySketch, clock: Callable[[], float]
) -> Callable[P, R]:
    """``fn``, recording how long each call takes (raised or returned) in ``sketch``."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        started = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            sketch.add(max(0.0, clock() - started))

    return wrapper
