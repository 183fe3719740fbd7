"""What one process owns: its local levels, its Redis-tier client and its generations.

The runtime is built lazily in the process that uses it and forgotten in a
forked child (``os.register_at_fork``), so a prefork child never shares the
parent's sockets or levels; the worker signals in :mod:`tiercel.workers.signals`
build it eagerly after fork and close it at shutdown.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from tiercel.core.cache.coordinator import FleetCoordinator
from tiercel.core.cache.freshness import BackgroundRefresher
from tiercel.core.cache.memoize import CachedFunction, function_scope
from tiercel.core.cache.multilevel import Lookup, MultiLevelCache
from tiercel.core.encoding.codecs import serializer_from_settings
from tiercel.core.encoding.prefixes import channel_name
from tiercel.core.settings import Settings, resolve_settings
from tiercel.core.tier.breaker import CircuitBreaker
from tiercel.core.tier.generations import Generations
from tiercel.core.tier.leases import LeaseManager
from tiercel.core.tier.notifier import Notifier
from tiercel.core.tier.redis_tier import RedisTier
from tiercel.core.tier.renewer import LeaseRenewer

log = logging.getLogger("tiercel.runtime")

#: How long a process trusts a generation counter it read (the hard bound on
#: missing an ``invalidate_all`` when no invalidation message arrives).
GENERATION_MAX_AGE = 1.0


class Runtime:
    """Per-process cache state: levels, Redis tier, generations."""

    def __init__(self, settings: Settings, *, role: str = "client") -> None:
        if settings.cache_url is None:
            raise ValueError("Runtime needs resolved settings with a cache_url")
        self.settings = settings
        self.role = role
        self.pid = os.getpid()
        self.serializer = serializer_from_settings(settings)
        breaker = CircuitBreaker(
            failures=settings.breaker_failures, reset_after=settings.breaker_reset
        )
        self.tier = RedisTier.from_url(
            settings.cache_url,
            serializer=self.serializer,
            namespace=settings.namespace,
            max_connections=settings.redis_max_connections,
            socket_timeout=settings.redis_timeout,
            breaker=breaker,
            max_value_bytes=settings.max_value_bytes,
        )
        self.cache = MultiLevelCache(
            serializer=self.serializer, tier=self.tier, default_ttl=settings.default_ttl
        )
        self.cache.add_level("memory", settings.l1_ttl, settings.l1_max_entries, kind="memory")
        self.cache.add_level(
            "bytes",
            settings.l2_ttl,
            max_size=max(1, settings.l2_max_bytes // 64),
            kind="bytes",
            max_bytes=settings.l2_max_bytes,
        )
        self.generations = Generations(self.tier, max_age=GENERATION_MAX_AGE)
        self.generations.on_change = self.cache.advance_epoch
        channel = channel_name(settings.namespace)
        self.leases = LeaseManager(self.tier.client, ttl=settings.lease_ttl, channel=channel)
        self.notifier = Notifier(
            self.tier.client,
            channel=channel,
            on_invalidate=lambda key: self.cache.invalidate_local([key]),
            on_tag=self.cache.invalidate_tag_local,
            on_generation=self.generations.observe,
            on_reset=self._on_reconnect,
            on_clear=self.cache.clear_local,
            on_done=self.cache.discard_local,
        )
        self.coordinator = FleetCoordinator(
            self.tier,
            self.leases,
            LeaseRenewer(self.leases),
            self.notifier,
            max_wait=settings.task_time_limit,
        )
        self.cache.coordinator = self.coordinator
        self.refresher = BackgroundRefresher()
        # Fleet metrics and sweeps (tasks.metrics, tasks.maintenance): a registry that pulls
        # the figures above at snapshot time, and a wake-up for this process's sweeper.
        from tiercel.tasks import metrics as _metrics

        #: Set by a sweep message (``s|``); this process's LocalSweeper waits on it.
        self.sweep_requested = threading.Event()
        self.notifier.on_sweep = self.sweep_requested.set
        #: This process's metrics registry (``self.call`` is wrapped to count calls).
        self.metrics = _metrics.instrument(self)

    def _on_reconnect(self) -> None:
        # Invalidation messages may have been missed while the channel was down: local
        # levels and remembered generations can no longer be trusted.
        self.cache.clear_local()
        self.generations.forget()

    def start_listening(self, timeout: float = 5.0) -> bool:
        """Subscribe to the invalidation channel now (workers do at start-up)."""
        return self.notifier.start(timeout)

    @property
    def namespace(self) -> str:
        """The key namespace of this deployment."""
        return self.settings.namespace

    def key(self, spec: CachedFunction[Any, Any], args: Any, kwargs: Any) -> str:
        """Cache key of one call of ``spec``."""
        return spec.key(self.namespace, self.generations, args, kwargs)

    def call(
        self,
        spec: CachedFunction[Any, Any],
        args: Any,
        kwargs: Any,
        *,
        inflight_id: str | None = None,
        force_refresh: bool = False,
    ) -> Lookup:
        """Look up or compute one call through every tier (refreshing early or stale
        values in this process's background refresher)."""
        return spec.call(
            self.cache,
            self.generations,
            self.namespace,
            args,
            kwargs,
            refresher=self.refresher,
            inflight_id=inflight_id,
            force_refresh=force_refresh,
        )

    def invalidate_all(self, spec: CachedFunction[Any, Any]) -> int:
        """Bump the function's generation and announce it to every process."""
        scope = function_scope(spec.name)
        generation = self.generations.bump(scope)
        self.coordinator.announce_generation(scope, generation)
        return generation

    def close(self) -> None:
        """Stop the listener and renewer, drop the levels, close connections."""
        self.refresher.close()
        self.coordinator.close()
        self.cache.close()


_lock = threading.Lock()
_current: Runtime | None = None


def current() -> Runtime:
    """This process's runtime, built on first use from the resolved settings."""
    global _current
    runtime = _current
    if runtime is not None and runtime.pid == os.getpid():
        return runtime
    with _lock:
        if _current is None or _current.pid != os.getpid():
            _current = Runtime(resolve_settings())
            # A client keeps local levels too: it must hear invalidations.
            _current.start_listening(timeout=1.0)
        return _current


def start(settings: Settings | None = None, *, role: str = "client") -> Runtime:
    """Build this process's runtime now (worker signals call this after fork)."""
    global _current
    with _lock:
        if _current is not None and _current.pid == os.getpid():
            _current.close()
        runtime = _current = Runtime(settings or resolve_settings(), role=role)
    if role == "worker":
        runtime.start_listening()
    return runtime


def shutdown() -> None:
    """Close this process's runtime, if any."""
    global _current
    with _lock:
        runtime, _current = _current, None
    if runtime is not None and runtime.pid == os.getpid():
        runtime.close()


def _forget_after_fork() -> None:
    # The child must not use (or close) the parent's sockets: just drop the reference.
    global _current, _lock
    _current = None
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)
