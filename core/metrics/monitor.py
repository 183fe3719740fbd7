"""The seed's PerformanceMonitor, a thin API over the metrics registry.

Named timers (``start_timer``/``stop_timer``), ``average`` and ``p95``, a
``monitor_function`` decorator and a ``measure`` context manager, as the seed
had them. Every duration is recorded in the registry's sketch
:data:`TIMER_SECONDS` with label ``timer=<name>``, so it appears in snapshots
and merges fleet-wide like every other sketch; ``average``, ``p95`` and
``percentile`` read this process's figures (:func:`tiercel.core.metrics.snapshots.sketch_of` on
a merged snapshot gives the fleet's). Percentiles are within the sketch's
relative accuracy (1% by default); the average is exact.

Timer names are label values, so they fall under the registry's bound on
label sets per metric: names beyond it share the overflow series.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any, Final, ParamSpec, TypeVar, overload

from tiercel.core.metrics.registry import MetricsRegistry
from tiercel.core.metrics.sketches import LatencySketch
from tiercel.core.metrics.timing import BlockTimer, time_calls

__all__ = ["MAX_PENDING_PER_NAME", "TIMER_SECONDS", "PerformanceMonitor", "TimerToken"]

P = ParamSpec("P")
R = TypeVar("R")

#: The sketch every monitor duration is recorded in, labelled ``timer=<name>``.
TIMER_SECONDS: Final = "tiercel_timer_seconds"
#: Name-started timers kept per name before the oldest are forgotten (a timer
#: started and never stopped must not grow memory without limit).
MAX_PENDING_PER_NAME: Final = 1024


class TimerToken:
    """A running timer from :meth:`PerformanceMonitor.start_timer`; stop it once."""

    __slots__ = ("name", "started", "stopped")

    def __init__(self, name: str, started: float) -> None:
        self.name = name
        self.started = started
        self.stopped = False

    def __repr__(self) -> str:
        return f"TimerToken({self.name!r}, started={self.started}, stopped={self.stopped})"


class PerformanceMonitor:
    """Named timers and their statistics, recorded in a :class:`MetricsRegistry`.

    ``registry`` defaults to a new private one; pass the process's registry so
    the timings reach its snapshots. ``clock`` (monotonic seconds) defaults to
    the registry's clock. Safe to share between threads.
    """

    def __init__(
        self,
        registry: MetricsRegistry | None = None,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.registry = registry if registry is not None else MetricsRegistry()
        self._clock = clock if clock is not None else self.registry.clock
        self._lock = threading.Lock()
        self._pending: dict[str, list[TimerToken]] = {}

    # -- timers --------------------------------------------------------------------------

    def start_timer(self, name: str) -> TimerToken:
        """Start timing ``name``; stop it with the returned token or by name.

        Timers of one name may overlap: stopping by name stops the most
        recently started one still running (only the newest
        :data:`MAX_PENDING_PER_NAME` are remembered by name; tokens always work).
        """
        token = TimerToken(name, self._clock())
        with self._lock:
            pending = self._pending.setdefault(name, [])
            pending.append(token)
            if len(pending) > MAX_PENDING_PER_NAME:
                del pending[0]
        return token

    def stop_timer(self, timer: TimerToken | str) -> float:
        """Stop a timer (a token, or the newest running timer of a name); return its seconds.

        :class:`ValueError` if the token was already stopped or no timer of
        that name is running.
        """
        now = self._clock()
        with self._lock:
            if isinstance(timer, TimerToken):
                token = timer
                if token.stopped:
                    raise ValueError(f"timer {token.name!r} was already stopped")
                pending = self._pending.get(token.name)
                if pending is not None:
                    # Identity, not ==: another token of the same name must stay.
                    for index, candidate in enumerate(pending):
                        if candidate is token:
                            del pending[index]
                            break
            else:
                pending = self._pending.get(timer)
                if not pending:
                    raise ValueError(
                        f"no timer named {timer!r} is running; call start_timer({timer!r}) "
                        "first (or stop it with the token start_timer returned)"
                    )
                token = pending.pop()
            if pending is not None and not pending:
                del self._pending[token.name]
            token.stopped = True
        elapsed = max(0.0, now - token.started)
        self.registry.observe(TIMER_SECONDS, elapsed, timer=token.name)
        return elapsed

    def record(self, name: str, seconds: float) -> None:
        """Record a duration measured elsewhere under ``name``."""
        self.registry.observe(TIMER_SECONDS, seconds, timer=name)

    def measure(self, name: str) -> BlockTimer:
        """A context manager timing its block under ``name`` (``.elapsed`` afterwards).

        ``with monitor.measure("load"): ...`` (or ``async with`` around awaits); a
        block that raises is timed too.
        """
        return BlockTimer(self.registry.sketch(TIMER_SECONDS, timer=name), self._clock)

    @overload
    def monitor_function(self, fn: Callable[P, R], /) -> Callable[P, R]: ...
    @overload
    def monitor_function(
        self, name: str | None = None, /
    ) -> Callable[[Callable[P, R]], Callable[P, R]]: ...

    def monitor_function(self, arg: Any = None, /) -> Any:
        """Time every call of a function: ``@monitor.monitor_function`` or ``(...)("name")``.

        The default name is the function's ``module.qualname``. An ``async def``
        stays one and is timed until its coroutine finishes, awaits included.
        """
        if callable(arg):
            return self._decorate(arg, None)
        name: str | None = arg

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            return self._decorate(fn, name)

        return decorate

    def _decorate(self, fn: Callable[P, R], name: str | None) -> Callable[P, R]:
        sketch = self.registry.sketch(
            TIMER_SECONDS, timer=name or f"{fn.__module__}.{fn.__qualname__}"
        )
        return time_calls(fn, sketch, self._clock)

    # -- statistics ----------------------------------------------------------------------

    def count(self, name: str) -> int:
        """How many durations ``name`` has recorded."""
        sketch = self._sketch(name)
        return sketch.count if sketch is not None else 0

    def average(self, name: str) -> float:
        """The mean seconds of ``name`` (exact); 0.0 before the first duration."""
        sketch = self._sketch(name)
        avg = sketch.avg if sketch is not None else None
        return avg if avg is not None else 0.0

    def percentile(self, name: str, q: float) -> float:
        """The ``q``-th percentile (0-100) of ``name`` in seconds; 0.0 before the first.

        Within the sketch's relative accuracy of the exact percentile.
        """
        if not 0.0 <= q <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {q!r} (95 for p95)")
        sketch = self._sketch(name)
        value = sketch.quantile(q / 100.0) if sketch is not None else None
        return value if value is not None else 0.0

    def p95(self, name: str) -> float:
        """The 95th percentile of ``name`` in seconds; 0.0 before the first duration."""
        return self.percentile(name, 95.0)

    def stats(self, name: str) -> dict[str, float]:
        """``count``, ``average``, ``min``, ``p50``, ``p95``, ``p99`` and ``max`` of ``name``."""
        sketch = self._sketch(name) or LatencySketch()
        return {
            "count": sketch.count,
            "average": sketch.avg or 0.0,
            "min": sketch.min or 0.0,
            "p50": sketch.quantile(0.50) or 0.0,
            "p95": sketch.quantile(0.95) or 0.0,
            "p99": sketch.quantile(0.99) or 0.0,
            "max": sketch.max or 0.0,
        }

    def names(self) -> list[str]:
        """The timer names with recorded durations or running timers, sorted."""
        recorded = [labels.get("timer", "") for labels in self.registry.label_sets(TIMER_SECONDS)]
        with self._lock:
            running = list(self._pending)
        return sorted({name for name in itertools.chain(recorded, running) if name})

    def _sketch(self, name: str) -> LatencySketch | None:
        return self.registry.get_sketch(TIMER_SECONDS, timer=name)
