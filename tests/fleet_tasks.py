"""Test-only tasks: what the fleet tests ask a worker process about itself.

Workers started by the tests opt into this module (``TIERCEL_TASK_MODULES``);
no production worker registers it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import shared_task

from tiercel.tasks import metrics, pools, runtime
from tiercel.tasks.cached import cached_task


@cached_task(ttl=600)
def revision(name: str, counter: str, compute_ms: int = 100) -> int:
    """Which computation produced the value: INCR ``counter`` first, then work.

    Two computations of one key return different numbers, so a test can tell
    whose value the cache holds (fencing).
    """
    from tiercel.tasks import runtime

    number = int(runtime.current().tier.client.incr(counter))
    time.sleep(compute_ms / 1000)
    return number


@cached_task(ttl=600)
def stubborn(name: str, counter: str, seconds: float = 3.0) -> int:
    """Like :func:`revision`, but ignores its soft time limit (as a call stuck in C code
    would): only the hard limit's SIGKILL stops it."""
    from celery.exceptions import SoftTimeLimitExceeded

    from tiercel.tasks import runtime

    number = int(runtime.current().tier.client.incr(counter))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(0.05)
        except SoftTimeLimitExceeded:
            continue
    return number


@cached_task(ttl=600, bind=True)
def bound_square(self: Any, n: int, counter: str, compute_ms: int = 200) -> dict[str, Any]:
    """A ``bind=True`` cached task: INCR ``counter``, then report the request it ran under."""
    number = int(runtime.current().tier.client.incr(counter))
    time.sleep(compute_ms / 1000)
    return {
        "square": n * n,
        "computation": number,
        "task": self.name,
        "task_id": self.request.id,
        "retries": self.request.retries,
    }


@cached_task(ttl=600, bind=True)
def routed_square(self: Any, n: int, counter: str) -> dict[str, Any]:
    """A ``bind=True`` cached task: INCR ``counter``, then report how it was delivered."""
    number = int(runtime.current().tier.client.incr(counter))
    info = self.request.delivery_info or {}
    return {
        "square": n * n,
        "computation": number,
        "queue": info.get("routing_key"),
        "priority": info.get("priority"),
        "eta": self.request.eta,
        "expires": self.request.expires,
        "hostname": self.request.hostname,
        "started": time.time(),
    }


@cached_task(ttl=600, bind=True, max_retries=3)
def retrying_square(
    self: Any, n: int, counter: str, failures: int = 1, compute_ms: int = 300
) -> dict[str, Any]:
    """Calls ``self.retry`` on its first ``failures`` attempts (counted in
    ``<counter>:attempts``, fleet-wide), then computes (counted in ``counter``)."""
    client = runtime.current().tier.client
    attempt = int(client.incr(f"{counter}:attempts"))
    time.sleep(compute_ms / 1000)  # long enough that duplicates wait on the lease
    if attempt <= failures:
        raise self.retry(countdown=0.2)
    number = int(client.incr(counter))
    return {"square": n * n, "computation": number, "retries": self.request.retries}


@shared_task(name="tests.fleet_tasks.offset")
def offset(value: int, by: int) -> int:
    """A plain task for canvas tests: ``value + by``."""
    return value + by


@shared_task(name="tests.fleet_tasks.total")
def total(values: list[int]) -> int:
    """A plain chord callback: the sum of the header's results."""
    return sum(values)


@shared_task(name="tests.fleet_tasks.fill_local")
def fill_local(prefix: str, count: int, ttl: float, hold_ms: int = 0) -> dict[str, Any]:
    """Put ``count`` entries living ``ttl`` seconds into this process's local levels only."""
    rt = runtime.current()
    for index in range(min(count, 10_000)):
        rt.cache.store_local(f"{prefix}:{index}", index, None, ttl, ())
    time.sleep(hold_ms / 1000)
    return {"pid": os.getpid()}


@shared_task(name="tests.fleet_tasks.local_levels")
def local_levels(prefix: str = "", hold_ms: int = 0) -> dict[str, Any]:
    """This process's levels: entries held (expired ones not yet swept included),
    how many keys start with ``prefix``, and how many sweeps each trigger ran."""
    rt = runtime.current()
    time.sleep(hold_ms / 1000)
    levels = {}
    for level in rt.cache.levels:
        # Read the held keys without touching them: a read would expire them lazily.
        held = list(getattr(level, "_data", {}))
        levels[level.name] = {
            "entries": len(held),
            "matching": sum(1 for key in held if key.startswith(prefix)),
        }
    return {
        "pid": os.getpid(),
        "node": rt.node,
        "levels": levels,
        "sweeps": {
            trigger: rt.metrics.counter_value(metrics.SWEEPS, trigger=trigger)
            for trigger in ("message", "timer")
        },
    }


@shared_task(name="tests.fleet_tasks.describe_pools")
def describe_pools(
    hold_ms: int = 0, use: tuple[str, ...] | list[str] = ("redis",)
) -> dict[str, Any]:
    """Which process ran this, and its pools: each used once, then snapshotted.

    Proves per-process pools on a prefork fleet: every child reports its own pid,
    and each pool's creator pid equals it. ``hold_ms`` keeps the child busy so
    concurrent calls spread over the children.
    """
    registry = pools.current()
    for name in use:
        with registry.acquire(name) as resource:
            if name == "redis":
                resource.ping()
    time.sleep(hold_ms / 1000)
    built = registry.built()
    return {
        "pid": os.getpid(),
        "parent_pid": os.getppid(),
        "registry_pid": registry.pid,
        "pools": {
            name: {
                "id": id(pool),
                "creator_pid": registry.creator_pid(name),
                "snapshot": pool.snapshot(),
            }
            for name, pool in built.items()
        },
        "memory": registry.budget.snapshot(),
    }


@shared_task(name="tests.fleet_tasks.timed_work")
def timed_work(ms: int = 20) -> int:
    """Sleep ``ms`` inside a named timer of this process's monitor; returns the pid."""
    import tiercel

    with tiercel.monitor().measure("fleet-test-work"):
        time.sleep(ms / 1000)
    return os.getpid()
