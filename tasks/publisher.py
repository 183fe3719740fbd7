"""Each worker process's metric snapshots, published to the result-backend Redis.

Every ``TIERCEL_METRICS_INTERVAL`` seconds :class:`SnapshotPublisher` writes
one JSON document with one Lua script stamped by the server's clock (so
hosts' clocks do not matter)::

    {ns}:metrics:proc:{process id}   {"node", "snapshot"}   PX 3 intervals
    {ns}:metrics:index               ZSET process id -> server ms of its last publish
"""

from __future__ import annotations

import json
import logging
import os
import threading
from urllib.parse import urlsplit

import redis

from tiercel.core.encoding.prefixes import METRICS
from tiercel.core.metrics.registry import MetricsRegistry
from tiercel.core.settings import Settings
from tiercel.core.tier import scripts
from tiercel.tasks.metrics import TTL_INTERVALS
from tiercel.tasks.retired import retire

log = logging.getLogger("tiercel.metrics")


def snapshot_key(namespace: str, process_id: str) -> str:
    """Where process ``process_id`` keeps its latest snapshot."""
    return f"{namespace}:{METRICS}:proc:{process_id}"


def index_key(namespace: str) -> str:
    """The sorted set of publishing processes (score: server ms of the last publish)."""
    return f"{namespace}:{METRICS}:index"


def latest_key(namespace: str) -> str:
    """Where the task id of the newest fleet aggregation is recorded."""
    return f"{namespace}:{METRICS}:latest"


def metrics_client(settings: Settings) -> redis.Redis:
    """A client of the result-backend Redis (the cache tier's if the backend is not Redis).

    The result backend runs ``noeviction``: snapshots and locks are not evicted
    under memory pressure the way cache entries are.
    """
    url = settings.result_backend
    if not url or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        url = settings.cache_url
    if not url:
        raise ValueError("fleet metrics need a Redis result backend or cache URL")
    return redis.Redis.from_url(
        url, socket_timeout=max(1.0, settings.redis_timeout), socket_connect_timeout=2.0
    )


def publish_snapshot(
    client: redis.Redis,
    namespace: str,
    registry: MetricsRegistry,
    interval: float,
    *,
    node: str | None = None,
    role: str = "worker",
) -> int:
    """Write ``registry``'s snapshot now; returns the server time (ms) it was stamped with."""
    snapshot = registry.snapshot()
    process_id = snapshot["processes"][0]["id"]
    document = json.dumps(
        {"node": node or snapshot["processes"][0]["hostname"], "role": role, "snapshot": snapshot},
        separators=(",", ":"),
    )
    ttl_ms = max(1, int(interval * TTL_INTERVALS * 1000))
    stamped = client.eval(
        scripts.source("publish_snapshot"),
        2,
        snapshot_key(namespace, process_id),
        index_key(namespace),
        document,
        ttl_ms,
        process_id,
    )
    return int(stamped)


class SnapshotPublisher:
    """A daemon thread publishing this process's snapshot every ``interval`` seconds.

    Failures are logged (once per outage) and retried at the next tick; a
    metrics outage never touches tasks. :meth:`stop` retires the process's
    figures (:mod:`tiercel.tasks.retired`) and removes it from the index, so a
    cleanly stopped process leaves the view at once and its counts stay in the
    fleet's totals. ``role`` is ``worker`` or ``client`` (a process that submits).
    """

    def __init__(
        self,
        client: redis.Redis,
        namespace: str,
        registry: MetricsRegistry,
        interval: float,
        *,
        node: str | None = None,
        role: str = "worker",
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.registry = registry
        self.interval = interval
        self.node = node
        self.role = role
        self.pid = os.getpid()
        self.published = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> SnapshotPublisher:
        """Publish once now (so a new process shows up at once), then on every tick."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, daemon=True, name=f"tiercel-metrics-{self.pid}"
            )
            self._thread.start()
        return self

    def publish(self) -> bool:
        """Publish now; False (logged) when Redis is unreachable."""
        try:
            publish_snapshot(
                self.client,
                self.namespace,
                self.registry,
                self.interval,
                node=self.node,
                role=self.role,
            )
        except Exception as exc:
            self.failures += 1
            level = logging.WARNING if self.failures == 1 else logging.DEBUG
            log.log(level, "publishing metrics failed: %s", exc)
            return False
        self.failures = 0
        self.published += 1
        return True

    def _run(self) -> None:
        self.publish()
        while not self._stop.wait(self.interval):
            self.publish()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop publishing, retire this process's figures and leave the index (best effort)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        try:
            snapshot = self.registry.snapshot()
            process_id = snapshot["processes"][0]["id"]
            retire(
                self.client,
                self.namespace,
                snapshot,
                snapshot_key=snapshot_key(self.namespace, process_id),
                index_key=index_key(self.namespace),
                process_id=process_id,
            )
        except Exception:  # Redis may be gone at shutdown; the TTL cleans up
            log.debug("retiring this process's metrics failed", exc_info=True)
        self.client.close()
