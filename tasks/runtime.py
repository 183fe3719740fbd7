"""The per-process composition root: everything one process owns, built in one constructor.

A :class:`Runtime` holds a process's local levels, its Redis-tier client,
leases, notifier (the invalidation listener), generations, background
refresher, pools and memory budget, metrics registry, event sender, and (in a worker) its
local sweeper; every process its snapshot publisher (a client that submits
counts the hits it answers itself). :meth:`Runtime.start` starts its
threads; :meth:`Runtime.close` stops them and closes its sockets, in reverse,
and retires the process's figures into the fleet's totals. A client's
runtime is closed at interpreter exit, so a short-lived process (a script,
``tiercel call``) flushes what it counted.

There is one per process (:func:`current`), built lazily in the process that
uses it; a forked child forgets its parent's (see
:mod:`tiercel.tasks.process_local`). The worker signals
(:mod:`tiercel.workers.signals`) build it eagerly after fork with
:func:`start` and close it with :func:`shutdown`.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from tiercel.core.cache.coordinator import FleetCoordinator
from tiercel.core.cache.freshness import BackgroundRefresher
from tiercel.core.cache.hot_memo import HotMemo
from tiercel.core.cache.local_inspection import LocalInspector
from tiercel.core.cache.lookup import Lookup
from tiercel.core.cache.memoize import NAMESPACE_SCOPE, CachedFunction, function_scope
from tiercel.core.cache.miss_book import generation_moves
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.cache.thread_shared_reads import ThreadSharedReads
from tiercel.core.cache.thread_shared_waits import ThreadSharedWaits
from tiercel.core.encoding.codecs import serializer_from_settings
from tiercel.core.encoding.prefixes import channel_name
from tiercel.core.local.memory_budget import fits_max_memory_per_child
from tiercel.core.metrics.collectors import register_cache
from tiercel.core.metrics.monitor import PerformanceMonitor
from tiercel.core.metrics.names import INVALIDATION_DELIVERY_SECONDS
from tiercel.core.metrics.registry import MetricsRegistry
from tiercel.core.settings import Settings, resolve_settings
from tiercel.core.tier.breaker import CircuitBreaker
from tiercel.core.tier.generations import Generations
from tiercel.core.tier.leases import LeaseManager
from tiercel.core.tier.liveness import ChannelLiveness
from tiercel.core.tier.notifier import Notifier
from tiercel.core.tier.redis_tier import RedisTier
from tiercel.core.tier.renewer import LeaseRenewer
from tiercel.tasks.event_sender import EventSender
from tiercel.tasks.local_joins import LocalJoins
from tiercel.tasks.pools import PoolRegistry
from tiercel.tasks.process_local import ProcessLocal
from tiercel.tasks.publisher import SnapshotPublisher, metrics_client
from tiercel.tasks.recorder import CallRecorder, fleet_samples, pool_samples
from tiercel.tasks.shared_results import SharedResults
from tiercel.tasks.source_events import announce_source
from tiercel.tasks.sweeper import LocalSweeper

log = logging.getLogger("tiercel.runtime")

#: How long a process trusts a generation counter it read (the hard bound on
#: missing an ``invalidate_all`` when no invalidation message arrives).
GENERATION_MAX_AGE = 1.0

#: Roles: a ``worker`` process runs the sweepers and waits for its listener at start;
#: a ``client`` (any process that submits) does neither. Both publish their snapshots.
ROLES = ("client", "worker")


class Runtime:
    """What one process owns; see the module docstring."""

    def __init__(
        self, settings: Settings, *, role: str = "client", node: str | None = None
    ) -> None:
        if settings.cache_url is None:
            raise ValueError("Runtime needs resolved settings with a cache_url")
        if role not in ROLES:
            raise ValueError(f"role={role!r}: expected one of {', '.join(ROLES)}")
        self.settings = settings
        self.role = role
        self.serializer = serializer_from_settings(settings)

        # The Redis wing: the tier, leases, and the channel every process listens on.
        self.tier = RedisTier.from_url(
            settings.cache_url,
            serializer=self.serializer,
            namespace=settings.namespace,
            max_connections=settings.redis_max_connections,
            socket_timeout=settings.redis_timeout,
            breaker=CircuitBreaker(
                failures=settings.breaker_failures, reset_after=settings.breaker_reset
            ),
            max_value_bytes=settings.max_value_bytes,
            keepalive_bound=settings.staleness_bound,
        )
        #: Whether the channel is live, so whether the local levels may answer: advanced
        #: by the notifier's probe answers, checked by every local read.
        self.liveness = ChannelLiveness(settings.staleness_bound, grace=settings.outage_grace)
        channel = channel_name(settings.namespace)
        self.leases = LeaseManager(self.tier.client, ttl=settings.lease_ttl, channel=channel)
        #: Set by a sweep message; this process's sweeper waits on it.
        self.sweep_requested = threading.Event()
        # The handlers reach the cache built below; none runs before start().
        #: Threads waiting on one key share one read of it (see ``CachedResult.get``).
        self.reads: ThreadSharedReads[Lookup | None] = ThreadSharedReads()
        #: Threads waiting on one pending task share one wait (see ``CachedResult.get``).
        self.waits: ThreadSharedWaits[Any] = ThreadSharedWaits()
        #: Handles joining one task share its AsyncResult.
        self.results = SharedResults()
        #: The tasks this process published, by key: its later submits join them.
        self.joins = LocalJoins()
        self.notifier = Notifier(
            self.tier.client,
            channel=channel,
            on_invalidate=lambda key: self.cache.invalidate_local([key]),
            on_tag=lambda tag: self.cache.invalidate_tag_local(tag),
            on_generation=lambda scope, number: self.generations.observe(scope, number),
            on_reset=self._on_reconnect,
            on_clear=lambda: self.cache.clear_local(),
            on_done=self._on_done,
            on_failed=self._on_failed,
            on_sweep=self.sweep_requested.set,
            liveness=self.liveness,
            on_inspect=lambda key, reply: self.inspector(key, reply),
            on_delivery=self.delivered("notifier"),
        )
        self.coordinator = FleetCoordinator(
            self.tier,
            self.leases,
            LeaseRenewer(self.leases),
            self.notifier,
            max_wait=settings.task_time_limit,
        )

        # The cache: local levels in front of the tier, sharing misses with the fleet.
        self.cache = MultiLevelCache(
            serializer=self.serializer,
            tier=self.tier,
            fleet=self.coordinator,
            default_ttl=settings.default_ttl,
            trust=self.liveness,
        )
        self.cache.add_level(
            "memory",
            settings.l1_ttl,
            settings.l1_max_entries,
            kind="memory",
            policy=settings.local_policy,
        )
        self.cache.add_level(
            "bytes",
            settings.l2_ttl,
            max_size=max(1, settings.l2_max_bytes // 64),
            kind="bytes",
            max_bytes=settings.l2_max_bytes,
            policy=settings.local_policy,
        )
        self.generations = Generations(self.tier, max_age=GENERATION_MAX_AGE)
        self.generations.on_change = self.cache.advance_epoch
        self.cache.misses.generation_moved = generation_moves(
            self.generations.moved_ago, function_scope, NAMESPACE_SCOPE
        )
        self.refresher = BackgroundRefresher()

        # Pools, and the memory budget over the levels (whose evictions reach the memos).
        self.pools = PoolRegistry(
            settings, levels=self.cache.levels, on_budget_eviction=self.cache.hot.forget_all
        )

        # Metrics: pulled from everything above at snapshot time.
        self.metrics = MetricsRegistry()
        register_cache(self.metrics, self.cache)
        self.recorder = CallRecorder(self.metrics, client=role == "client")
        self.metrics.register_collector(fleet_samples(self.cache, self.coordinator, self.refresher))
        self.metrics.register_collector(pool_samples(self.pools))
        #: Named timers for user code (``tiercel.monitor()``), in this registry's snapshots.
        self.monitor = PerformanceMonitor(self.metrics)
        #: Answers ``tiercel cache inspect``: what this process's levels hold of a key.
        self.inspector = LocalInspector(
            self.tier.client, settings.namespace, self.cache, self.identity
        )

        # A worker's own sweeps; every process's publisher is built at start().
        self.sweeper = (
            LocalSweeper(
                self.cache, self.pools, self.metrics, settings.sweep_interval, self.sweep_requested
            )
            if role == "worker"
            else None
        )
        self.publisher: SnapshotPublisher | None = None
        #: Publishes the worker's source events off the task's thread (see after_task).
        self.events = EventSender()
        self.node = node
        #: Whether the invalidation listener was subscribed when :meth:`start` returned.
        self.listening = False

    def delivered(self, listener: str) -> Callable[[float], None]:
        """What a listener of this process (``notifier``, ``asyncio``) calls with a delivery
        probe's delay: one observation in this process's delivery sketch."""

        def observe(seconds: float) -> None:
            self.metrics.observe(INVALIDATION_DELIVERY_SECONDS, seconds, listener=listener)

        return observe

    def _on_done(self, key: str) -> None:
        self.joins.forget(key)  # the next submit reads the value, or claims anew
        # A newer value of ``key`` exists elsewhere, unless it is this process's own.
        if not self.coordinator.own_echo(key):
            self.cache.discard_local(key)

    def _on_failed(self, key: str) -> None:
        self.joins.forget(key)

    def identity(self) -> dict[str, Any]:
        """Who this process is: the metrics ``id``, ``hostname``, ``pid``, and its ``role``
        and ``node``."""
        return {**self.metrics.process, "role": self.role, "node": self.node}

    # --- lifecycle ---

    def start(self, *, listen_timeout: float | None = None) -> Runtime:
        """Start listening for invalidations and publishing snapshots, and in a worker the
        sweepers.

        A worker waits up to 5 s for its subscription (a client 1 s) by default;
        a listener that is not up yet keeps trying in the background.
        """
        worker = self.role == "worker"
        timeout = listen_timeout if listen_timeout is not None else (5.0 if worker else 1.0)
        self.listening = self.notifier.start(timeout)
        try:  # metrics and sweeps must never stop a process from serving
            if self.sweeper is not None:
                self.pools.start_sweeper(self.settings.pool_reap_interval)
                self._warn_if_budget_exceeds_child_limit()
                self.sweeper.start()
            self.publisher = SnapshotPublisher(
                metrics_client(self.settings),
                self.settings.namespace,
                self.metrics,
                self.settings.metrics_interval,
                node=self.node,
                role=self.role,
            ).start()
        except Exception:
            log.warning("starting the sweeper and metrics publisher failed", exc_info=True)
        return self

    def close(self) -> None:
        """Stop every thread and close every socket this process opened (reverse order)."""
        self.events.close()
        if self.publisher is not None:
            self.publisher.stop()
        if self.sweeper is not None:
            self.sweeper.stop()
        self.pools.close()
        self.refresher.close()
        self.coordinator.close()
        self.cache.close()

    def _on_reconnect(self) -> None:
        # Invalidation messages may have been missed while the channel was down: local
        # levels and remembered generations can no longer be trusted.
        self.cache.clear_local()
        self.generations.forget()
        self.joins.clear()

    def _warn_if_budget_exceeds_child_limit(self) -> None:
        try:
            from celery import current_app

            limit = current_app.conf.worker_max_memory_per_child
        except Exception:  # pragma: no cover - no app configured
            return
        budget = self.pools.budget
        if not fits_max_memory_per_child(budget.max_bytes, limit):
            log.warning(
                "TIERCEL_MEMORY_BUDGET_BYTES=%d plus this process's %d bytes exceed "
                "worker_max_memory_per_child=%s KiB: children will be recycled before their "
                "levels fill; lower the budget or raise the limit",
                budget.max_bytes,
                budget.snapshot()["peak_rss_bytes"],
                limit,
            )

    # --- cached calls ---

    @property
    def namespace(self) -> str:
        """The key namespace of this deployment."""
        return self.settings.namespace

    def key(self, spec: CachedFunction[Any, Any], args: Any, kwargs: Any) -> str:
        """Cache key of one call of ``spec``."""
        return spec.key(self.namespace, self.generations, args, kwargs)

    def counted_key(self, spec: CachedFunction[Any, Any], args: Any, kwargs: Any) -> str:
        """:meth:`key` of a call about to be answered: an argument that cannot be encoded
        is counted as the call's miss reason, as :meth:`call` counts it."""
        return spec.counted_key(self.cache, self.namespace, self.generations, args, kwargs)

    def call(
        self,
        spec: CachedFunction[Any, Any],
        args: Any,
        kwargs: Any,
        *,
        inflight_id: str | None = None,
        force_refresh: bool = False,
        key: str | None = None,
        claimed: bool = False,
    ) -> Lookup:
        """Look up or compute one call through every tier (refreshing early or stale
        values in this process's background refresher), counted by the recorder.
        ``key`` is the call's cache key when the caller derived it already; ``claimed``:
        a submitter just missed it everywhere (see ``CachedFunction.call``)."""
        started = time.perf_counter()
        found = spec.call(
            self.cache,
            self.generations,
            self.namespace,
            args,
            kwargs,
            refresher=self.refresher,
            inflight_id=inflight_id,
            force_refresh=force_refresh,
            key=key,
            claimed=claimed,
        )
        self.recorder.record(
            spec.name, found.source, time.perf_counter() - started, found.compute_seconds
        )
        return found

    def hot_memo(self, spec: CachedFunction[Any, Any]) -> HotMemo:
        """A hot memo for a cached task's calls in this process, in front of its first
        local level; its answers are counted by the recorder as hits of that level."""
        memo = self.cache.with_levels(spec.levels).hot_memo(owner=self)
        self.recorder.track(spec.name, memo)
        return memo

    def hot_lifetime(self, spec: CachedFunction[Any, Any], found: Lookup) -> float:
        """How long a hot memo may answer ``found`` for ``spec`` (see ``hot_lifetime``)."""
        return spec.hot_lifetime(found, self.generations)

    def before_task(self, task: Any, args: Any = (), kwargs: Any = None) -> None:
        """Before each cached task in a worker (``task_prerun``): its fleet answers may
        wait for Celery's own round trips until :meth:`after_task` (this thread's reply
        window, see :mod:`tiercel.core.cache.coordinator`), and its lease claim may go
        out now (``CachedTask.tiercel_claim_ahead``)."""
        self.coordinator.open_window()
        task.tiercel_claim_ahead(self, tuple(args or ()), dict(kwargs or {}))

    def after_task(
        self,
        task: Any,
        task_id: str | None,
        state: str | None,
        args: Any = (),
        kwargs: Any = None,
    ) -> None:
        """After each task in a worker: hear the fleet answers a cached task left owed
        (Celery has stored its result by now), keep the levels inside the memory budget,
        and tell Flower where a cached task's answer came from (``args`` and ``kwargs``,
        the task's, give its cache key)."""
        spec = getattr(task, "tiercel_spec", None)
        if spec is not None:
            try:
                self.coordinator.close_window()
            except Exception:  # the task's result is stored: nothing may fail it now
                log.warning("reading a cached task's owed fleet answers failed", exc_info=True)
        self.pools.enforce_budget()
        hot = getattr(task, "tiercel_hot", None)
        memo = hot.current() if hot is not None else None
        announce_source(
            self.recorder,
            self.events,
            task,
            task_id,
            state,
            None
            if spec is None
            else lambda: self.key(spec, task.tiercel_args(args or ()), kwargs or {}),
            memo.source if memo is not None else None,
        )

    def invalidate_all(self, spec: CachedFunction[Any, Any]) -> int:
        """Bump the function's generation and announce it to every process."""
        return self._bump(function_scope(spec.name))

    def invalidate_namespace(self) -> int:
        """Forget every cached value of this namespace (every function's): bump the
        namespace's generation and announce it; returns the new generation."""
        return self._bump(NAMESPACE_SCOPE)

    def _bump(self, scope: str) -> int:
        generation = self.generations.bump(scope)
        self.coordinator.announce_generation(scope, generation)
        return generation


def _build_client() -> Runtime:
    return Runtime(resolve_settings()).start()


_process: ProcessLocal[Runtime] = ProcessLocal(_build_client, close=Runtime.close)
#: This process's runtime holder. Hot paths compare ``RUNTIME.value`` (None until one is
#: built, and again in a forked child) with the runtime their memo was made for.
RUNTIME = _process


def current() -> Runtime:
    """This process's runtime, built on first use (as a client) from the resolved settings."""
    return _process.get()


def existing() -> Runtime | None:
    """This process's runtime if it has one (never builds one)."""
    return _process.peek()


def start(
    settings: Settings | None = None, *, role: str = "client", node: str | None = None
) -> Runtime:
    """Build and start this process's runtime now, replacing (closing) one it had."""
    runtime = Runtime(settings or resolve_settings(), role=role, node=node)
    return _process.replace(runtime).start()


def shutdown() -> None:
    """Close this process's runtime, if any."""
    _process.clear()


# A client's figures are flushed when it exits (a worker's runtime is closed by the
# worker signals first; a forked child holds none of its parent's).
atexit.register(shutdown)


def monitor() -> PerformanceMonitor:
    """This process's :class:`~tiercel.core.metrics.monitor.PerformanceMonitor`: named
    timers (``measure``, ``monitor_function``, ``start_timer``/``stop_timer``) whose
    durations join the process's snapshots, so the fleet view, ``tiercel stats`` and the
    exporter show them merged across every process."""
    return current().monitor


def invalidate_namespace() -> int:
    """Forget every cached value of this deployment's namespace, in every tier and every
    process (a generation bump, announced on the channel); returns the new generation."""
    return current().invalidate_namespace()
