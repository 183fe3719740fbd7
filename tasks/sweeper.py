"""Each worker process's sweeper: expired local entries out, idle pool resources reaped.

Beat's ``tiercel.maintenance.sweep`` publishes a sweep message that every
process's notifier (each prefork child runs its own) turns into a wake-up
here; the sweeper also runs on its own timer (``TIERCEL_SWEEP_INTERVAL``), so
sweeps go on when beat or the channel is down.
"""

from __future__ import annotations

import logging
import os
import threading

from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.metrics.registry import MetricsRegistry
from tiercel.tasks.metrics import SWEEPS, SWEPT
from tiercel.tasks.pools import PoolRegistry

log = logging.getLogger("tiercel.maintenance")


class LocalSweeper:
    """A daemon thread sweeping one process's levels and pools.

    Sweeps when ``requested`` is set (by a sweep message) and every
    ``interval`` seconds regardless.
    """

    def __init__(
        self,
        cache: MultiLevelCache,
        pools: PoolRegistry,
        metrics: MetricsRegistry,
        interval: float,
        requested: threading.Event,
    ) -> None:
        self.cache = cache
        self.pools = pools
        self.metrics = metrics
        self.interval = interval
        self.requested = requested
        self.sweeps = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LocalSweeper:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, daemon=True, name=f"tiercel-sweeper-{os.getpid()}"
            )
            self._thread.start()
        return self

    def sweep(self, trigger: str) -> int:
        """Drop expired local entries and reap idle pool resources now; returns entries."""
        removed = self.cache.expire()
        self.pools.sweep()
        self.sweeps += 1
        self.metrics.inc(SWEEPS, trigger=trigger)
        self.metrics.inc(SWEPT, removed)
        return removed

    def _run(self) -> None:
        while not self._stop.is_set():
            woken = self.requested.wait(self.interval)
            if self._stop.is_set():
                return
            self.requested.clear()
            try:
                self.sweep("message" if woken else "timer")
            except Exception:  # a sweep must never kill the thread
                log.warning("local sweep failed", exc_info=True)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread."""
        self._stop.set()
        self.requested.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
