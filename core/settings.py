"""tiercel's settings: one typed object read from ``TIERCEL_*`` environment variables.

Every value is validated when the object is built; a bad value raises
:class:`~tiercel.core.errors.SettingsError` naming the variable and what was expected.
URLs may carry passwords: use :func:`redact_url` before showing one.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from tiercel.core.encoding.prefixes import DEFAULT_NAMESPACE
from tiercel.core.errors import SettingsError

PREFIX = "TIERCEL_"
_T = TypeVar("_T")
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
# Portable across brokers: RabbitMQ reserves "amq." and caps names at 255 bytes.
_QUEUE_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,200}$")
_REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster", "rediss+cluster")
_BROKER_SCHEMES = (*_REDIS_SCHEMES, "amqp", "amqps", "pyamqp", "memory", "sentinel")
_CODECS = ("msgpack", "json", "pickle")
#: The local levels' eviction policies (tiercel.core.local.cache_level's COST and LRU).
_LOCAL_POLICIES = ("cost", "lru")
_POSTGRES_SCHEMES = ("postgresql", "postgres")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 10**6,
    "mb": 10**6,
    "mi": 2**20,
    "mib": 2**20,
    "g": 10**9,
    "gb": 10**9,
    "gi": 2**30,
    "gib": 2**30,
}


def redact_url(url: str | None) -> str:
    """Return ``url`` with any password replaced by ``***`` (safe to log or print)."""
    if not url:
        return "(unset)"
    parts = urlsplit(url)
    if "password" in parts.query.lower():  # secrets in query options (sentinel_password=...)
        query = "&".join(
            f"{name}=***" if "password" in name.lower() else item
            for item in parts.query.split("&")
            for name in [item.partition("=")[0]]
        )
        # a text swap, not urlunsplit: that would turn unix:///path into unix:/path
        url = url.replace(f"?{parts.query}", f"?{query}", 1)
        parts = parts._replace(query=query)
    if parts.password is not None and "," in parts.netloc:
        # several hosts (cluster, sentinel): urlsplit cannot read one port from them
        hosts = parts.netloc.rpartition("@")[2]
        return urlunsplit(
            (
                parts.scheme,
                f"{parts.username or ''}:***@{hosts}",
                parts.path,
                parts.query,
                parts.fragment,
            )
        )
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _env_name(name: str) -> str:
    return PREFIX + name.upper()


def parse_bytes(text: str) -> int:
    """Parse a size such as ``64MiB``, ``512kb`` or ``1048576`` into bytes."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError("a size such as 1048576, 512KiB or 64MiB")
    unit = (match.group(2) or "").lower()
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("true or false")


def _parse_keys(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


_PARSERS: dict[type[Any] | str, Callable[[str], Any]] = {
    "int": int,
    "float": float,
    "bool": _parse_bool,
    "str": str,
    "str | None": str,
    "tuple[str, ...]": _parse_keys,
}


@dataclass(frozen=True)
class Settings:
    """All of tiercel's settings. Build with :meth:`from_env`; override with :meth:`replace`.

    Sizes are bytes, durations seconds. ``None`` URLs mean "not configured":
    ``tiercel up`` then starts embedded redis-server processes.
    """

    broker_url: str | None = None
    result_backend: str | None = None
    cache_url: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    default_ttl: float = 3600.0
    l1_max_entries: int = 4096
    l1_ttl: float = 300.0
    l2_max_bytes: int = 64 * 2**20
    l2_ttl: float = 3600.0
    #: How the local levels choose what to keep: ``cost`` (compute seconds saved per
    #: byte, scan-resistant) or ``lru`` (least recently used).
    local_policy: str = "cost"
    memory_budget_bytes: int = 256 * 2**20
    max_value_bytes: int = 8 * 2**20
    compress_min_bytes: int = 16 * 1024
    codec: str = "msgpack"
    signing_keys: tuple[str, ...] = field(default=(), repr=False)
    #: Modules holding the deployment's own cached tasks, imported by every worker.
    task_modules: tuple[str, ...] = ()
    redis_timeout: float = 0.5
    redis_max_connections: int = 32
    breaker_failures: int = 3
    breaker_reset: float = 0.5
    lease_ttl: float = 30.0
    #: How long later submitters may join a submitted computation. Short on purpose: a
    #: task message lost by a broker must not hold its key longer; a duplicate message
    #: after expiry costs a queue slot, never a second computation (the lease).
    inflight_ttl: float = 120.0
    #: A waiting client re-publishes a task still PENDING (never started) after this many
    #: seconds while nobody computes its key: a message a broker lost is not lost work.
    #: Cached tasks are idempotent, so a duplicate costs a queue slot. 0 turns it off.
    republish_after: float = 60.0
    task_time_limit: float = 1800.0
    visibility_timeout: float = 3600.0
    embedded_cache_maxmemory: int = 256 * 2**20
    flower_port: int = 5555
    log_level: str = "INFO"
    #: Celery's task_default_queue: a fleet consumes only its own queue, so several
    #: fleets (or test runs) can share one broker.
    queue: str = "celery"
    database_url: str | None = None
    db_pool_min: int = 1
    db_pool_max: int = 4
    pool_timeout: float = 5.0
    pool_max_idle: float = 300.0
    pool_max_lifetime: float = 3600.0
    pool_reap_interval: float = 30.0
    #: Seconds between a worker process's metric snapshots (tiercel.tasks.metrics); a process is
    #: left out of the fleet view after 2 intervals without one.
    metrics_interval: float = 10.0
    #: Seconds between beat's fleet aggregations (tiercel.metrics.aggregate).
    aggregate_interval: float = 20.0
    #: Seconds between sweeps of expired local entries: beat's fleet-wide one, and each
    #: process's own timer as the fallback.
    sweep_interval: float = 60.0
    #: Seconds between Redis-tier housekeeping runs (stale leases, tag-index members).
    housekeeping_interval: float = 300.0
    #: The staleness bound, in seconds: no process answers from its local levels a value
    #: invalidated (by key, tag, version or namespace) longer ago than this, whatever the
    #: network does. Each process probes its invalidation channel every third of it, and
    #: while the channel is not known live reads the Redis tier (or computes) instead.
    staleness_bound: float = 1.0
    #: Opt-in availability: seconds a process whose invalidation channel went silent keeps
    #: answering from its local levels anyway. A local answer may then be up to
    #: ``staleness_bound + outage_grace`` seconds older than an invalidation. 0 (the
    #: default) keeps the bound strict.
    outage_grace: float = 0.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every ``TIERCEL_*`` variable from ``environ`` (default ``os.environ``)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for item in fields(cls):
            raw = env.get(_env_name(item.name))
            if raw is None or raw.strip() == "":
                continue
            values[item.name] = _parse_field(item, raw)
        settings = cls(**values)
        settings.validate()
        return settings

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied and validated."""
        updated = dataclasses.replace(self, **changes)
        updated.validate()
        return updated

    @property
    def embedded(self) -> bool:
        """True when no Redis URL is configured and tiercel should start its own."""
        return self.broker_url is None and self.result_backend is None and self.cache_url is None

    def validate(self) -> None:
        """Raise :class:`SettingsError` for the first value that is out of range."""
        _check_url("broker_url", self.broker_url, _BROKER_SCHEMES)
        _check_url("result_backend", self.result_backend, (*_REDIS_SCHEMES, "rpc"))
        _check_url("cache_url", self.cache_url, _REDIS_SCHEMES)
        if not _NAMESPACE_RE.match(self.namespace):
            _fail("namespace", self.namespace, "1-64 characters of letters, digits, _ . -")
        if self.codec not in _CODECS:
            _fail("codec", self.codec, "one of " + ", ".join(_CODECS))
        if self.local_policy not in _LOCAL_POLICIES:
            _fail("local_policy", self.local_policy, "one of " + ", ".join(_LOCAL_POLICIES))
        if self.codec == "pickle" and not self.signing_keys:
            raise SettingsError(
                f"{_env_name('codec')}=pickle needs {_env_name('signing_keys')}: "
                "a comma-separated list of secret keys, newest first"
            )
        if any(len(key) < 16 for key in self.signing_keys):
            raise SettingsError(f"{_env_name('signing_keys')}: every key needs >= 16 characters")
        for name in (
            "l1_max_entries",
            "l2_max_bytes",
            "max_value_bytes",
            "redis_max_connections",
            "breaker_failures",
            "memory_budget_bytes",
            "embedded_cache_maxmemory",
        ):
            if getattr(self, name) <= 0:
                _fail(name, getattr(self, name), "a positive number")
        for name in (
            "default_ttl",
            "l1_ttl",
            "l2_ttl",
            "redis_timeout",
            "breaker_reset",
            "lease_ttl",
            "inflight_ttl",
            "task_time_limit",
            "visibility_timeout",
        ):
            if getattr(self, name) <= 0:
                _fail(name, getattr(self, name), "a positive number of seconds")
        for module in self.task_modules:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", module):
                _fail("task_modules", module, "dotted Python module names, comma-separated")
        if not 0.1 <= self.staleness_bound <= 3600:
            _fail("staleness_bound", self.staleness_bound, "a number of seconds in [0.1, 3600]")
        if not 0 <= self.outage_grace <= 86400:
            _fail("outage_grace", self.outage_grace, "0 (strict) to 86400 seconds")
        if self.republish_after < 0:
            _fail("republish_after", self.republish_after, "0 (off) or more seconds")
        if self.compress_min_bytes < 0:
            _fail("compress_min_bytes", self.compress_min_bytes, "0 or more bytes")
        if self.visibility_timeout <= self.task_time_limit:
            raise SettingsError(
                f"{_env_name('visibility_timeout')}={self.visibility_timeout:g} must exceed "
                f"{_env_name('task_time_limit')}={self.task_time_limit:g}, or the broker "
                "redelivers tasks that are still running"
            )
        if not 0 < self.flower_port < 65536:
            _fail("flower_port", self.flower_port, "a TCP port between 1 and 65535")
        _check_url("database_url", self.database_url, _POSTGRES_SCHEMES)
        if self.db_pool_max < 1:
            _fail("db_pool_max", self.db_pool_max, "1 or more connections")
        if not 0 <= self.db_pool_min <= self.db_pool_max:
            _fail(
                "db_pool_min",
                self.db_pool_min,
                f"0 to TIERCEL_DB_POOL_MAX={self.db_pool_max} connections",
            )
        for name in ("pool_timeout", "pool_max_idle", "pool_max_lifetime", "pool_reap_interval"):
            if getattr(self, name) <= 0:
                _fail(name, getattr(self, name), "a positive number of seconds")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            _fail("log_level", self.log_level, "DEBUG, INFO, WARNING, ERROR or CRITICAL")
        for name in (
            "metrics_interval",
            "aggregate_interval",
            "sweep_interval",
            "housekeeping_interval",
        ):
            if not 0 < getattr(self, name) <= 86400:
                _fail(name, getattr(self, name), "a number of seconds in (0, 86400]")
        if not _QUEUE_RE.match(self.queue) or self.queue.startswith("amq."):
            _fail(
                "queue",
                self.queue,
                "1-200 characters of letters, digits, _ . : - not starting with amq.",
            )

    def describe(self) -> dict[str, str]:
        """The settings as strings safe to print: URLs redacted, secrets hidden."""
        shown: dict[str, str] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "signing_keys":
                shown[item.name] = f"({len(value)} keys)"
            elif item.name.endswith(("_url", "_backend")):
                shown[item.name] = redact_url(value)
            else:
                shown[item.name] = str(value)
        return shown


def _fail(name: str, value: object, expected: str) -> None:
    raise SettingsError(f"{_env_name(name)}={value!r} is invalid: expected {expected}")


def _check_url(name: str, url: str | None, schemes: tuple[str, ...]) -> None:
    if url is None:
        return
    scheme = urlsplit(url).scheme
    if scheme not in schemes:
        _fail(name, redact_url(url), "a URL starting with " + ", ".join(s + "://" for s in schemes))


def _parse_field(item: dataclasses.Field[Any], raw: str) -> Any:
    type_name = item.type if isinstance(item.type, str) else getattr(item.type, "__name__", "")
    parser = _PARSERS.get(type_name, str)
    name = _env_name(item.name)
    if item.name.endswith("_bytes") or item.name == "embedded_cache_maxmemory":
        parser = parse_bytes
    try:
        return parser(raw.strip())
    except ValueError as exc:
        expected = (
            str(exc) if parser in (parse_bytes, _parse_bool) else f"a value of type {type_name}"
        )
        shown = "***" if item.name == "signing_keys" else raw
        raise SettingsError(f"{name}={shown!r} is invalid: expected {expected}") from None


_REDISH = ("redis", "rediss", "unix")


#: This process's settings when an application set them (``tiercel.init_app``).
_configured: Settings | None = None


def configure(settings: Settings | None) -> None:
    """Make ``settings`` what :func:`resolve_settings` answers in this process (and in the
    worker processes it forks); None goes back to reading the environment."""
    global _configured
    _configured = settings


def resolve_settings(settings: Settings | None = None) -> Settings:
    """Settings from the environment, completed from a running embedded fleet.

    Settings an application configured (:func:`configure`) come first. Then
    ``TIERCEL_*`` variables; else the URLs of a fleet started by
    ``tiercel up`` (see :mod:`tiercel.core.embedded.fleet_file`). A Redis broker also serves as
    result backend and cache tier when those are not set (a separate
    ``allkeys-lru`` cache Redis is better in production: see the README).
    """
    from tiercel.core.embedded.fleet_file import read_fleet_file

    if settings is None and _configured is not None:
        return _configured
    settings = settings or Settings.from_env()
    if settings.embedded:
        record = read_fleet_file()
        if record is not None:
            settings = settings.replace(
                broker_url=record["broker_url"],
                result_backend=record["result_backend"],
                cache_url=record["cache_url"],
            )
            if not settings.task_modules:
                settings = settings.replace(task_modules=tuple(record.get("task_modules", ())))
    if settings.broker_url is None:
        raise SettingsError(
            "no broker configured: set TIERCEL_BROKER_URL (and TIERCEL_RESULT_BACKEND, "
            "TIERCEL_CACHE_URL), or start the embedded fleet with `tiercel up`"
        )
    redis_broker = urlsplit(settings.broker_url).scheme in _REDISH
    if settings.result_backend is None:
        if not redis_broker:
            raise SettingsError("TIERCEL_RESULT_BACKEND is required when the broker is not Redis")
        settings = settings.replace(result_backend=settings.broker_url)
    if settings.cache_url is None:
        if urlsplit(settings.result_backend or "").scheme not in _REDISH:
            raise SettingsError("TIERCEL_CACHE_URL is required: the cache tier needs a Redis URL")
        settings = settings.replace(cache_url=settings.result_backend)
    return settings
