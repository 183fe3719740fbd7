"""Maintenance: beat's periodic tasks, and each worker process's own sweeper and publisher.

Periodic tasks (scheduled by :mod:`tiercel.workers.schedule`; exactly one beat per deployment):

* ``tiercel.maintenance.sweep`` publishes ``s|`` on the invalidation channel.
  Every process's notifier (each prefork child runs its own) wakes its
  :class:`LocalSweeper`, which drops expired local entries and reaps idle pool
  resources. A control command or a broadcast queue would reach only one
  process per node; a publish reaches every subscriber. Each sweeper also
  runs on its own timer (``TIERCEL_SWEEP_INTERVAL``), so sweeps go on when
  beat or the channel is down.
* ``tiercel.maintenance.housekeeping`` walks the cache tier with SCAN in
  bounded batches and bounded time (never KEYS), resuming from a stored
  cursor: deletes lease, in-flight and failure keys that have no TTL (nobody
  could ever release them) and removes tag-index members whose value expired.
* ``tiercel.metrics.aggregate`` merges the live per-process snapshots into the
  fleet view (:mod:`tiercel.tasks.metrics`), returns it as its result and records its
  task id under :func:`tiercel.tasks.metrics.latest_key`.

Each runs under :func:`periodic_lock` (``SET NX PX`` on
``{ns}:periodic:{name}``, released by compare-and-delete): a second run that
starts while one works returns ``{"skipped": ...}`` and does nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, Final

import redis
from celery import shared_task

from tiercel.core.encoding.prefixes import (
    FAILURE,
    INFLIGHT,
    LEASE,
    PERIODIC_LOCK,
    TAG_DRAIN,
    TAG_INDEX,
)
from tiercel.core.settings import Settings
from tiercel.core.tier import events, scripts
from tiercel.core.tier.connections import is_cluster
from tiercel.tasks import metrics, runtime

__all__ = [
    "LocalSweeper",
    "aggregate",
    "announce_source",
    "housekeep",
    "housekeeping",
    "periodic_lock",
    "start_process",
    "stop_process",
    "sweep",
]

log = logging.getLogger("tiercel.maintenance")

#: Keys looked at per SCAN call (and tag members per SSCAN call) in housekeeping.
SCAN_BATCH: Final = 500
#: Longest one housekeeping run works before it stores its cursor and stops.
HOUSEKEEPING_BUDGET: Final = 2.0
#: Node name of this worker (set in the main process before the pool forks).
NODE: str | None = None

# -- the overlap guard -----------------------------------------------------------------------


@contextlib.contextmanager
def periodic_lock(client: redis.Redis, namespace: str, name: str, ttl: float) -> Iterator[bool]:
    """``with periodic_lock(...) as held:`` True for the one run that may work.

    The lock lives ``ttl`` seconds at most (a run killed mid-way cannot block
    the next one for longer) and is released, by its owner only, on exit.
    """
    key = f"{namespace}:{PERIODIC_LOCK}:{name}"
    token = uuid.uuid4().hex
    held = bool(client.set(key, token, nx=True, px=max(1, int(ttl * 1000))))
    try:
        yield held
    finally:
        if held:
            with contextlib.suppress(redis.RedisError):
                client.eval(scripts.source("delete_if_equal"), 1, key, token)


_clients: dict[int, redis.Redis] = {}


def _client(settings: Settings) -> redis.Redis:
    """This process's client of the result-backend Redis (locks, snapshots)."""
    pid = os.getpid()
    client = _clients.get(pid)
    if client is None:
        _clients.clear()  # a forked child must not use its parent's sockets
        client = _clients[pid] = metrics.metrics_client(settings)
    return client


def _skipped(name: str) -> dict[str, Any]:
    return {"skipped": f"another {name} run holds the lock"}


# -- periodic tasks --------------------------------------------------------------------------


@shared_task(name="tiercel.maintenance.sweep", ignore_result=True)
def sweep() -> dict[str, Any]:
    """Ask every worker process to sweep its local levels and pools now."""
    rt = runtime.current()
    settings = rt.settings
    with periodic_lock(
        _client(settings), settings.namespace, "sweep", settings.sweep_interval
    ) as held:
        if not held:
            return _skipped("sweep")
        receivers = rt.notifier.publish(events.SweepRequested().encode())
    return {"receivers": receivers}


@shared_task(name="tiercel.maintenance.housekeeping", ignore_result=True)
def housekeeping(budget: float = HOUSEKEEPING_BUDGET) -> dict[str, Any]:
    """Clean the cache tier for at most ``budget`` seconds (see :func:`housekeep`)."""
    rt = runtime.current()
    settings = rt.settings
    with periodic_lock(_client(settings), settings.namespace, "housekeeping", budget + 30) as held:
        if not held:
            return _skipped("housekeeping")
        return housekeep(rt.tier.client, settings.namespace, budget=budget)


def housekeep(
    client: Any, namespace: str, *, budget: float = HOUSEKEEPING_BUDGET, batch: int = SCAN_BATCH
) -> dict[str, Any]:
    """One bounded pass over ``namespace``'s keys, resuming where the last one stopped.

    Deletes lease, in-flight and failure keys without a TTL, and removes
    tag-index members whose value key no longer exists. Returns what it did,
    and whether it finished a full pass (``complete``). On Redis Cluster, SCAN
    is per node: each primary is walked with its own stored cursor.
    """
    deadline = time.monotonic() + budget
    done: dict[str, Any] = {"scanned": 0, "stale_keys": 0, "tag_members": 0, "complete": True}
    if is_cluster(client):
        nodes = [(node.name, client.get_redis_connection(node)) for node in client.get_primaries()]
    else:
        nodes = [("", client)]
    for node_name, node_client in nodes:
        if not _housekeep_node(client, node_client, namespace, node_name, batch, deadline, done):
            done["complete"] = False
    return done


def _housekeep_node(
    client: Any,
    node_client: Any,
    namespace: str,
    node_name: str,
    batch: int,
    deadline: float,
    done: dict[str, Any],
) -> bool:
    """Walk one node's keyspace (``node_client``) until done or ``deadline``; deletes and
    tag pruning go through ``client``, which routes each key to its slot's node."""
    cursor_key = f"{namespace}:{PERIODIC_LOCK}:housekeeping:cursor"
    if node_name:
        cursor_key += f":{node_name}"
    cursor = int(client.get(cursor_key) or 0)
    removable = tuple(f"{namespace}:{kind}:" for kind in (LEASE, INFLIGHT, FAILURE))
    tag_prefix = f"{namespace}:{TAG_INDEX}:"
    complete = False
    while True:  # at least one batch per node and run, however small the budget
        cursor, keys = node_client.scan(cursor, match=f"{namespace}:*", count=batch)
        names = [key.decode() if isinstance(key, bytes) else key for key in keys]
        done["scanned"] += len(names)
        candidates = [name for name in names if name.startswith(removable)]
        if candidates:
            pipe = client.pipeline(transaction=False)
            for name in candidates:
                pipe.pttl(name)
            stale = [
                name for name, ttl in zip(candidates, pipe.execute(), strict=True) if ttl == -1
            ]
            if stale:
                done["stale_keys"] += int(client.delete(*stale))
        for name in names:
            if name.startswith(tag_prefix) and f":{TAG_DRAIN}:" not in name:
                done["tag_members"] += _prune_tag(client, name, batch, deadline)
        if int(cursor) == 0:
            complete = True
            break
        if time.monotonic() >= deadline:
            break
    client.set(cursor_key, int(cursor), ex=86400)
    return complete


def _prune_tag(client: Any, tag_key: str, batch: int, deadline: float) -> int:
    removed = 0
    cursor = 0
    while True:
        cursor, members = client.sscan(tag_key, cursor, count=batch)
        if members:
            pipe = client.pipeline(transaction=False)
            for member in members:
                pipe.exists(member)
            gone = [m for m, alive in zip(members, pipe.execute(), strict=True) if not alive]
            if gone:
                removed += int(client.srem(tag_key, *gone))
        if cursor == 0 or time.monotonic() >= deadline:
            return removed


@shared_task(name="tiercel.metrics.aggregate", bind=True)
def aggregate(self: Any) -> dict[str, Any]:
    """Merge every live process's snapshot into the fleet view; the view is the result.

    Its task id is recorded under :func:`tiercel.tasks.metrics.latest_key`, so
    ``tiercel stats``, the exporter and Flower users find the newest one.
    """
    rt = runtime.current()
    settings = rt.settings
    client = _client(settings)
    with periodic_lock(
        client, settings.namespace, "aggregate", settings.aggregate_interval
    ) as held:
        if not held:
            return _skipped("aggregation")
        view = metrics.aggregate(client, settings.namespace, settings.metrics_interval)
    task_id = getattr(self.request, "id", None)
    if task_id:
        view["task_id"] = task_id
        expires = self.app.conf.result_expires
        seconds = int(
            expires.total_seconds() if hasattr(expires, "total_seconds") else (expires or 3600)
        )
        client.set(metrics.latest_key(settings.namespace), task_id, ex=max(60, seconds))
    return view


# -- each worker process's own duties --------------------------------------------------------


class LocalSweeper:
    """A daemon thread sweeping this process's levels and pools.

    Sweeps when a sweep message arrives (the notifier sets
    ``runtime.sweep_requested``) and every ``interval`` seconds regardless.
    """

    def __init__(self, rt: runtime.Runtime, interval: float) -> None:
        self.runtime = rt
        self.interval = interval
        self.sweeps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, daemon=True, name=f"tiercel-sweeper-{os.getpid()}"
        )

    def start(self) -> LocalSweeper:
        """Start the thread."""
        self._thread.start()
        return self

    def sweep(self, trigger: str) -> int:
        """Drop expired local entries and reap idle pool resources now; returns entries."""
        from tiercel.tasks import pools

        rt = self.runtime
        removed = rt.cache.expire()
        registry = pools._current  # sweep the pools this process built, never build one
        if registry is not None and registry.pid == os.getpid():
            registry.sweep()
        self.sweeps += 1
        rt.metrics.inc(metrics.SWEEPS, trigger=trigger)
        rt.metrics.inc(metrics.SWEPT, removed)
        return removed

    def _run(self) -> None:
        requested = self.runtime.sweep_requested
        while not self._stop.is_set():
            woken = requested.wait(self.interval)
            if self._stop.is_set():
                return
            requested.clear()
            try:
                self.sweep("message" if woken else "timer")
            except Exception:  # a sweep must never kill the thread
                log.warning("local sweep failed", exc_info=True)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread."""
        self._stop.set()
        self.runtime.sweep_requested.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)


_duties: dict[int, tuple[LocalSweeper, metrics.SnapshotPublisher]] = {}


def start_process(rt: runtime.Runtime) -> None:
    """Start this worker process's sweeper and snapshot publisher (after fork)."""
    stop_process()
    settings = rt.settings
    sweeper = LocalSweeper(rt, settings.sweep_interval).start()
    publisher = metrics.SnapshotPublisher(
        metrics.metrics_client(settings),
        settings.namespace,
        rt.metrics,
        settings.metrics_interval,
        node=NODE,
    ).start()
    _duties[os.getpid()] = (sweeper, publisher)


def stop_process() -> None:
    """Stop them (worker shutdown); the publisher leaves the fleet index."""
    duties = _duties.pop(os.getpid(), None)
    _duties.clear()  # entries of a parent process are not ours to stop
    if duties is not None:
        sweeper, publisher = duties
        sweeper.stop()
        publisher.stop()


def announce_source(task: Any, task_id: str | None, state: str | None) -> None:
    """Send a ``task-tiercel-<source>`` event for a cached task that just succeeded.

    Flower counts it in ``flower_events_total{type="task-tiercel-redis", task=...}``
    and keeps its fields (``source``, ``seconds_saved``) with the task.
    """
    rt = runtime._current
    recorder = getattr(rt, "recorder", None)
    if recorder is None or rt is None or rt.pid != os.getpid():
        return
    last = recorder.last()
    if last is None or state != "SUCCESS" or not task_id or last[0] != task.name:
        return
    if not task.app.conf.worker_send_task_events:
        return
    _, source, saved = last
    try:
        task.send_event(
            f"task-tiercel-{source}", retry=False, source=source, seconds_saved=round(saved, 6)
        )
    except Exception:  # an event is a nicety: never fail the task for it
        log.debug("sending the source event failed", exc_info=True)
