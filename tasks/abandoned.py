"""Freeing the lease of a computation whose process is gone, from the worker's main process.

A hard time limit, a ``revoke(terminate=True)`` or a lost child (SIGKILL, OOM)
kills the process holding a key's lease before it can release it. Its lease
would expire by TTL (``TIERCEL_LEASE_TTL``) in any case; the main process,
which Celery tells about all three, frees it at once so a waiter takes over
now (the failure mode of celery-singleton's issue 40 cannot arise either way).

Runs in the main process: it builds only a small Redis client of its own
(no listener thread, no levels), lazily, after the pool has forked.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

from tiercel.core.encoding.codecs import serializer_from_settings
from tiercel.core.encoding.prefixes import channel_name
from tiercel.core.settings import Settings, resolve_settings
from tiercel.core.tier.generations import Generations
from tiercel.core.tier.leases import LeaseManager
from tiercel.core.tier.redis_tier import RedisTier
from tiercel.tasks.process_local import ProcessLocal

log = logging.getLogger("tiercel.abandoned")


class MainProcessTools(NamedTuple):
    """What the main process needs to free a lease: no listener thread, no levels."""

    settings: Settings
    tier: RedisTier
    leases: LeaseManager


def _build_tools() -> MainProcessTools:
    settings = resolve_settings()
    tier = RedisTier.from_url(
        settings.cache_url or "",
        serializer=serializer_from_settings(settings),
        namespace=settings.namespace,
        max_connections=4,
        socket_timeout=settings.redis_timeout,
    )
    leases = LeaseManager(
        tier.client, ttl=settings.lease_ttl, channel=channel_name(settings.namespace)
    )
    return MainProcessTools(settings, tier, leases)


_tools: ProcessLocal[MainProcessTools] = ProcessLocal(
    _build_tools, close=lambda tools: tools.tier.close()
)


def release_abandoned(task: Any, task_id: str, args: Any, kwargs: Any, why: str) -> bool:
    """Free the lease ``task_id`` holds on its key, if any; never raises."""
    spec = getattr(task, "tiercel_spec", None)
    if spec is None or not task_id:
        return False
    try:
        settings, tier, leases = _tools.get()
        call_args = task.tiercel_args(args or ()) if hasattr(task, "tiercel_args") else args or ()
        key = spec.key(settings.namespace, Generations(tier, max_age=0.0), call_args, kwargs or {})
        released = bool(leases.release_abandoned(key, task_id))
    except Exception:  # cleanup is best effort: the lease still expires by TTL
        log.warning(
            "tiercel: could not free the lease of %s[%s] after %s",
            task.name,
            task_id,
            why,
            exc_info=True,
        )
        return False
    if released:
        log.info("tiercel: freed the lease of %s[%s] after %s", task.name, task_id, why)
    return released


def close() -> None:
    """Close the main process's client (worker shutdown)."""
    _tools.clear()
