"""When a cached value should be recomputed before (or after) it expires.

* **Probabilistic early refresh** (XFetch: Vattani, Chierichetti and Lowenstein,
  "Optimal Probabilistic Cache Stampede Prevention", VLDB 2015): a reader
  recomputes early when ``delta * beta * -ln(U) >= time_left``, where
  ``delta`` is how long the value took to compute and ``U`` is uniform on
  (0, 1]. Hot keys are refreshed shortly before they expire, by one reader,
  so their expiry never becomes a stampede; cold keys almost never are.
* **Stale-while-revalidate**: a value is kept ``stale_ttl`` seconds past its
  ttl; a reader in that window gets it at once while one refresh runs in the
  background.
* **Stale-if-error**: when a refresh fails and a stale value exists, readers
  get the stale value instead of the error.

Every tier stores a value for ``ttl + stale_ttl`` (its physical lifetime);
"fresh" is the first ``ttl`` seconds of it.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

log = logging.getLogger("tiercel.freshness")

#: -ln(U) beyond this is (practically) never drawn.
_NEVER_DRAWN = 40.0

FRESH = "fresh"
EARLY = "early"
STALE = "stale"


@dataclass(frozen=True)
class FreshnessPolicy:
    """How one cached function treats values near or past their ttl."""

    stale_ttl: float = 0.0
    stale_while_revalidate: bool = True
    stale_if_error: bool = False
    early_refresh: float = 1.0

    def __post_init__(self) -> None:
        if self.stale_ttl < 0:
            raise ValueError(f"stale_ttl={self.stale_ttl}: expected 0 or more seconds")
        if self.early_refresh < 0:
            raise ValueError(f"early_refresh={self.early_refresh}: expected 0 (off) or more")

    def physical_ttl(self, ttl: float) -> float:
        """How long tiers keep a value whose fresh lifetime is ``ttl``."""
        return ttl + self.stale_ttl

    def judge(
        self,
        remaining: float | None,
        compute_seconds: float,
        rand: Callable[[], float] = random.random,
    ) -> str:
        """``fresh``, ``early`` (refresh now, XFetch) or ``stale`` for a value with
        ``remaining`` seconds of physical lifetime left."""
        if remaining is None:
            return FRESH
        fresh_left = remaining - self.stale_ttl
        if fresh_left <= 0:
            return STALE
        if self.early_refresh > 0 and compute_seconds > 0:
            scale = compute_seconds * self.early_refresh
            # -ln(U) >= 40 has probability e^-40 (~4e-18): far from expiry, skip the draw.
            if fresh_left < scale * _NEVER_DRAWN:
                draw = 1.0 - rand()  # uniform on (0, 1]: log() never sees 0
                if scale * -math.log(draw) >= fresh_left:
                    return EARLY
        return FRESH


class BackgroundRefresher:
    """At most one background refresh per key, on a few threads, with a bounded backlog."""

    def __init__(self, *, workers: int = 2, max_pending: int = 256) -> None:
        self._workers = workers
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._pid = os.getpid()
        self.started = 0
        self.dropped = 0
        self.failed = 0

    def submit(self, key: str, refresh: Callable[[], object]) -> bool:
        """Run ``refresh`` in the background unless ``key`` is already being refreshed
        or the backlog is full; returns whether it was scheduled."""
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's threads are not ours
                self._pid, self._executor, self._pending = os.getpid(), None, set()
            if key in self._pending or len(self._pending) >= self._max_pending:
                self.dropped += 1
                return False
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self._workers, thread_name_prefix="tiercel-refresh"
                )
            self._pending.add(key)
            self.started += 1
            executor = self._executor

        def run() -> None:
            try:
                refresh()
            except Exception:
                self.failed += 1
                log.warning(
                    "tiercel: background refresh of %s failed; the stale value stays",
                    key,
                    exc_info=True,
                )
            finally:
                with self._lock:
                    self._pending.discard(key)

        executor.submit(run)
        return True

    def close(self) -> None:
        """Stop accepting work and wait for running refreshes."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
