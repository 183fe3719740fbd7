"""Maintenance: beat's periodic tasks (each worker process's own sweeper is
:mod:`tiercel.tasks.sweeper`).

Periodic tasks (scheduled by :mod:`tiercel.workers.schedule`; exactly one beat per deployment):

* ``tiercel.maintenance.sweep`` publishes ``s|`` on the invalidation channel.
  Every process's notifier (each prefork child runs its own) wakes its
  :class:`~tiercel.tasks.sweeper.LocalSweeper`, which drops expired local
  entries and reaps idle pool resources. A control command or a broadcast queue would reach only one
  process per node; a publish reaches every subscriber. Each sweeper also
  runs on its own timer (``TIERCEL_SWEEP_INTERVAL``), so sweeps go on when
  beat or the channel is down.
* ``tiercel.maintenance.housekeeping`` walks the cache tier with SCAN in
  bounded batches and bounded time (never KEYS), resuming from a stored
  cursor: deletes lease, in-flight and failure keys that have no TTL (nobody
  could ever release them) and removes tag-index members whose value expired.
* ``tiercel.metrics.aggregate`` merges the live per-process snapshots into the
  fleet view (:mod:`tiercel.tasks.fleet_view`), returns it as its result and records
  its task id under :func:`tiercel.tasks.publisher.latest_key`. It first publishes
  one delivery probe (``p|<sent>``) on the invalidation channel: every listener
  that hears it records the delay in ``tiercel_invalidation_delivery_seconds``,
  and the next snapshots bring those figures to the next aggregation.

Each runs under :func:`periodic_lock` (``SET NX PX`` on
``{ns}:periodic:{name}``, released by compare-and-delete): a second run that
starts while one works returns ``{"skipped": ...}`` and does nothing. Each is a
:class:`~tiercel.tasks.quiet.QuietTask`: no monitoring events, so Flower's task
list keeps the user's tasks, not three runs a minute of these.
"""

from __future__ import annotations

import contextlib
import logging
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
from tiercel.core.tier import events, scripts
from tiercel.core.tier.connections import is_cluster
from tiercel.tasks import fleet_view, runtime
from tiercel.tasks.process_local import ProcessLocal
from tiercel.tasks.publisher import latest_key, metrics_client
from tiercel.tasks.quiet import QuietTask

__all__ = [
    "aggregate",
    "housekeep",
    "housekeeping",
    "periodic_lock",
    "sweep",
]

log = logging.getLogger("tiercel.maintenance")

#: Keys looked at per SCAN call (and tag members per SSCAN call) in housekeeping.
SCAN_BATCH: Final = 500
#: Longest one housekeeping run works before it stores its cursor and stops.
HOUSEKEEPING_BUDGET: Final = 2.0

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


#: This process's client of the result-backend Redis (locks, snapshots).
_backend: ProcessLocal[redis.Redis] = ProcessLocal(
    lambda: metrics_client(runtime.current().settings), close=redis.Redis.close
)


def _skipped(name: str) -> dict[str, Any]:
    return {"skipped": f"another {name} run holds the lock"}


# -- periodic tasks --------------------------------------------------------------------------


@shared_task(name="tiercel.maintenance.sweep", base=QuietTask, ignore_result=True)
def sweep() -> dict[str, Any]:
    """Ask every worker process to sweep its local levels and pools now."""
    rt = runtime.current()
    settings = rt.settings
    with periodic_lock(
        _backend.get(), settings.namespace, "sweep", settings.sweep_interval
    ) as held:
        if not held:
            return _skipped("sweep")
        receivers = rt.notifier.publish(events.SweepRequested().encode())
    return {"receivers": receivers}


@shared_task(name="tiercel.maintenance.housekeeping", base=QuietTask, ignore_result=True)
def housekeeping(budget: float = HOUSEKEEPING_BUDGET) -> dict[str, Any]:
    """Clean the cache tier for at most ``budget`` seconds (see :func:`housekeep`)."""
    rt = runtime.current()
    settings = rt.settings
    with periodic_lock(_backend.get(), settings.namespace, "housekeeping", budget + 30) as held:
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


def _probe_delivery(rt: runtime.Runtime) -> int | None:
    """Publish one delivery probe; how many subscribers got it (None: it failed).

    Sent before the aggregation reads the snapshots: this run's probe reaches the
    next view either way (each process records it, then publishes it with its next
    snapshot), and sent first it is never late by the aggregation's own reads. One
    run in every aggregation period, under the lock, so the figures' rate is fixed.
    A failure (cache tier down) never fails the aggregation.
    """
    try:
        return rt.notifier.publish(events.ChannelProbe(time.time()).encode())
    except redis.RedisError as exc:
        log.warning("publishing the delivery probe failed: %s", exc)
        return None


@shared_task(name="tiercel.metrics.aggregate", base=QuietTask, bind=True)
def aggregate(self: Any) -> dict[str, Any]:
    """Merge every live process's snapshot into the fleet view; the view is the result.

    Its task id is recorded under :func:`tiercel.tasks.publisher.latest_key`, so
    ``tiercel stats``, the exporter and Flower users find the newest one.
    """
    rt = runtime.current()
    settings = rt.settings
    client = _backend.get()
    with periodic_lock(
        client, settings.namespace, "aggregate", settings.aggregate_interval
    ) as held:
        if not held:
            return _skipped("aggregation")
        receivers = _probe_delivery(rt)
        view = fleet_view.aggregate(client, settings.namespace, settings.metrics_interval)
    view["probe_receivers"] = receivers
    task_id = getattr(self.request, "id", None)
    if task_id:
        view["task_id"] = task_id
        expires = self.app.conf.result_expires
        seconds = int(
            expires.total_seconds() if hasattr(expires, "total_seconds") else (expires or 3600)
        )
        client.set(latest_key(settings.namespace), task_id, ex=max(60, seconds))
    return view
