"""Cache URLs to redis-py clients: one server, TLS, Redis Cluster and Sentinel.

One factory, :func:`client_from_url`, for every kind of cache tier:

``redis://[user:password@]host:port[/db][?option=value...]``
    one server; ``rediss://`` is the same over TLS and ``unix:///path`` a
    local socket. Query options are redis-py's ``from_url`` options, such as
    ``ssl_ca_certs=/path/ca.crt``, ``ssl_cert_reqs=required``,
    ``ssl_certfile``/``ssl_keyfile`` (client certificates).
``redis+cluster://[user:password@]host:port[,host:port...][?option=value...]``
    a Redis Cluster (:class:`redis.cluster.RedisCluster`); every listed node is
    a startup node, so the client starts while any one of them answers.
    ``rediss+cluster://`` is the same over TLS. There is no database number
    on a cluster (only ``/0``).
``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db][?option=value...]``
    the master that the listed Sentinels report for ``service``
    (:meth:`redis.sentinel.Sentinel.master_for`); a failover is followed
    without a restart. The user and password are the master's; the
    Sentinels' own, if any, go in ``sentinel_username`` / ``sentinel_password``
    query options.

Connection pools differ by kind, and the difference matters when sizing
``max_connections``:

* one server and Sentinel: one bounded pool of ``max_connections`` whose
  callers wait up to ``pool_timeout`` for a free connection (redis-py's
  ``BlockingConnectionPool`` semantics), shared by every thread;
* Cluster: one such bounded, waiting pool *per node* (redis-py keeps a
  client per cluster node), so a process may hold up to ``max_connections``
  times the number of masters. A command waits only for its own node's pool.

Every connection uses TCP keepalive (:func:`keepalive_options`): a peer that
vanished without closing is found by the operating system within a few
seconds, not after the system default of hours. The keepalive is the second
line: the invalidation listener's own probes hold the staleness bound.

Every client makes one attempt per command (no retries inside redis-py): the
Redis tier's circuit breaker decides when to try again. On a cluster a
``MOVED``/``ASK`` redirect is still followed, since that is not a retry of a
failure but the cluster telling the client where a slot lives.

Error messages never contain the password: URLs are shown through
:func:`tiercel.core.settings.redact_url`.
"""

from __future__ import annotations

import functools
import socket
from dataclasses import dataclass
from typing import Any, Final, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from tiercel.core.errors import SettingsError
from tiercel.core.settings import redact_url

__all__ = [
    "CLUSTER_SCHEMES",
    "SENTINEL_SCHEMES",
    "SINGLE_SCHEMES",
    "CacheClient",
    "CacheTarget",
    "client_from_url",
    "is_cluster",
    "keepalive_options",
    "parse_cache_url",
]

#: Any client :func:`client_from_url` returns.
CacheClient: TypeAlias = "redis.Redis | RedisCluster"

SINGLE_SCHEMES: Final = ("redis", "rediss", "unix")
CLUSTER_SCHEMES: Final = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES: Final = ("redis+sentinel",)
_DEFAULT_PORT: Final = 6379
_DEFAULT_SENTINEL_PORT: Final = 26379
#: The staleness bound keepalive intervals default to (TIERCEL_STALENESS_BOUND's default).
_KEEPALIVE_BOUND: Final = 1.0


@functools.cache
def driver_options() -> dict[str, Any]:
    """Connection options naming tiercel in ``CLIENT SETINFO``, worked out once.

    Every new connection reports its library to the server (on Redis 7.2 and
    later ``CLIENT LIST`` shows ``lib-name=redis-py(tiercel_v0.1.0)``). Left to
    itself, redis-py looks its own version up in the installed package's metadata
    for each connection it opens: half a millisecond of parsing per connection, on
    the event loop for an asyncio pool. One description, built here, serves every
    pool of the process.
    """
    try:
        from redis.driver_info import DriverInfo
    except ImportError:  # redis-py before 7: the version, looked up once
        from redis.utils import get_lib_version

        return {"lib_version": get_lib_version()}  # type: ignore[no-untyped-call, unused-ignore]
    return {"driver_info": DriverInfo().add_upstream_driver("tiercel", _tiercel_version())}


def _tiercel_version() -> str:
    from tiercel import __version__

    return __version__


def keepalive_options(bound: float = _KEEPALIVE_BOUND) -> dict[int, int]:
    """TCP keepalive options (redis-py's ``socket_keepalive_options``) for ``bound``.

    The first probe after a third of the bound idle, then one every third, three
    unanswered ones closing the connection; the kernel counts in whole seconds, so
    never less than 1 s each. Where the platform names the options differently
    (or not at all), only the ones it has are set.
    """
    step = max(1, int(bound / 3))
    wanted = {"TCP_KEEPIDLE": step, "TCP_KEEPINTVL": step, "TCP_KEEPCNT": 3}
    if not hasattr(socket, "TCP_KEEPIDLE"):
        wanted["TCP_KEEPALIVE"] = step  # macOS names the idle time so
    return {getattr(socket, name): value for name, value in wanted.items() if hasattr(socket, name)}


@dataclass(frozen=True)
class CacheTarget:
    """What a cache URL names: its ``kind`` (``single``, ``cluster``, ``sentinel``) and nodes.

    ``nodes`` are the (host, port) pairs listed (cluster startup nodes, or
    Sentinels); ``options`` are the redis-py connection keywords from the URL
    (user, password, TLS options, db...); ``service`` is the Sentinel service.
    ``url`` is the original URL; :attr:`shown` is it with the password hidden.
    """

    kind: str
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()
    service: str = ""
    tls: bool = False

    @property
    def shown(self) -> str:
        """The URL, safe to print."""
        return _shown(self.url)


def _shown(url: str) -> str:
    """``url`` with its password hidden, even when it is too malformed for redact_url."""
    try:
        return redact_url(url)
    except ValueError:  # an unparsable port: hide the whole user part instead
        parts = urlsplit(url)
        _, at, hosts = parts.netloc.rpartition("@")
        netloc = f"***@{hosts}" if at else hosts
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _fail(url: str, problem: str) -> SettingsError:
    return SettingsError(f"cache URL {_shown(url)}: {problem}")


def _parse_hosts(url: str, hosts: str, default_port: int) -> tuple[tuple[str, int], ...]:
    nodes: list[tuple[str, int]] = []
    for part in hosts.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("["):  # [ipv6]:port
            host, _, rest = part[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port_text = part.rpartition(":") if ":" in part else (part, "", "")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise _fail(url, f"{part!r} is not host:port") from None
        if not host or not 0 < port < 65536:
            raise _fail(url, f"{part!r} is not host:port")
        nodes.append((host, port))
    if not nodes:
        raise _fail(url, "no host:port given")
    return tuple(nodes)


def _options(
    url: str, scheme: str, userinfo: str, host: tuple[str, int], path: str, query: str
) -> dict[str, Any]:
    """redis-py's own parsing of user, password, db and query options (cast to types)."""
    netloc = f"{userinfo}@" if userinfo else ""
    netloc += f"[{host[0]}]:{host[1]}" if ":" in host[0] else f"{host[0]}:{host[1]}"
    try:
        return dict(parse_url(urlunsplit((scheme, netloc, path, query, ""))))  # type: ignore[no-untyped-call, unused-ignore]
    except ValueError as exc:
        # redis-py names the bad option, never the password
        raise _fail(url, str(exc)) from None


def parse_cache_url(url: str) -> CacheTarget:
    """Parse a cache URL (see the module docstring); raises SettingsError when malformed."""
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme in SINGLE_SCHEMES:
        return CacheTarget("single", url, tls=scheme == "rediss")
    if scheme not in CLUSTER_SCHEMES + SENTINEL_SCHEMES:
        raise _fail(
            url,
            "expected a URL starting with "
            + ", ".join(s + "://" for s in SINGLE_SCHEMES + CLUSTER_SCHEMES + SENTINEL_SCHEMES),
        )
    userinfo, _, hosts = parts.netloc.rpartition("@")
    tls = scheme.startswith("rediss")
    base = "rediss" if tls else "redis"
    if scheme in CLUSTER_SCHEMES:
        nodes = _parse_hosts(url, hosts, _DEFAULT_PORT)
        options = _options(url, base, userinfo, nodes[0], parts.path, parts.query)
        if options.pop("db", 0) != 0:
            raise _fail(url, "a Redis Cluster has only database 0")
        return CacheTarget("cluster", url, nodes, tuple(options.items()), tls=tls)
    nodes = _parse_hosts(url, hosts, _DEFAULT_SENTINEL_PORT)
    service, _, db = parts.path.strip("/").partition("/")
    if not service or "/" in db:
        raise _fail(
            url,
            "expected redis+sentinel://[user:password@]host:port[,host:port...]"
            "/<service name>[/<db>]",
        )
    options = _options(url, base, userinfo, nodes[0], f"/{db}" if db else "", parts.query)
    return CacheTarget("sentinel", url, nodes, tuple(options.items()), service=service)


class _BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """The Sentinel master pool with ``BlockingConnectionPool``'s bound and wait.

    redis-py's Sentinel pool is a plain ``ConnectionPool`` that fails at once
    when ``max_connections`` are busy; mixing in the blocking pool makes it wait
    ``timeout`` seconds like the single-server pool does.
    """

    def disconnect(self, inuse_connections: bool = True) -> None:
        """Close the connections; when the client closes, the Sentinels' sockets too."""
        super().disconnect(inuse_connections)
        # Following a failover disconnects only idle connections (inuse=False): the
        # Sentinels are still needed then. Closing the client passes True.
        if inuse_connections:
            self.sentinel_manager.close()


def client_from_url(
    url: str,
    *,
    max_connections: int = 32,
    socket_timeout: float = 0.5,
    pool_timeout: float | None = None,
    health_check_interval: int = 30,
    keepalive_bound: float = _KEEPALIVE_BOUND,
    **connection_kwargs: Any,
) -> CacheClient:
    """A client for the cache tier at ``url``, built for a cache (see the module docstring).

    ``max_connections`` bounds each pool (per node on a cluster);
    ``pool_timeout`` (default ``socket_timeout``) is how long a caller waits for
    a free connection. ``socket_timeout`` also bounds connecting.
    ``keepalive_bound`` sets the TCP keepalive intervals (:func:`keepalive_options`).
    Other keywords go to redis-py's connections. Responses are bytes. Raises
    SettingsError for a malformed URL; nothing is connected until first use
    except on a cluster, whose client reads the slot map at once (and raises
    redis errors when no startup node answers).
    """
    target = parse_cache_url(url)
    wait = socket_timeout if pool_timeout is None else pool_timeout
    # One attempt per call: retrying inside redis-py would multiply the cost of an
    # outage; the tier's breaker decides when to try again.
    no_retry = Retry(NoBackoff(), 0)
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(keepalive_bound),
        **driver_options(),
        **connection_kwargs,
    }
    if target.kind == "single":
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=wait,
            health_check_interval=health_check_interval,
            retry=no_retry,
            **common,
        )
        return redis.Redis.from_pool(pool)
    options = dict(target.options)
    if target.kind == "cluster":
        return _cluster_client(target, options, max_connections, wait, no_retry, common)
    sentinel_kwargs = {key: value for key, value in common.items() if key.startswith("socket_")}
    sentinel_kwargs["retry"] = no_retry  # else each dead Sentinel costs seconds of retries
    for key in ("username", "password"):
        if f"sentinel_{key}" in options:
            sentinel_kwargs[key] = options.pop(f"sentinel_{key}")
    sentinel = Sentinel(list(target.nodes), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call, unused-ignore]
    options.pop("host", None)
    options.pop("port", None)
    options.pop("connection_class", None)  # the Sentinel pool picks its own (TLS or not)
    # As with redis-py's from_url, options written in the URL win over keywords.
    master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call, unused-ignore]
        target.service,
        connection_pool_class=_BlockingSentinelPool,
        max_connections=max_connections,
        timeout=wait,
        retry=no_retry,
        health_check_interval=health_check_interval,
        **{**common, **options},
    )
    return master


def _cluster_client(
    target: CacheTarget,
    options: dict[str, Any],
    max_connections: int,
    wait: float,
    retry: Retry,
    common: dict[str, Any],
) -> RedisCluster:
    (first_host, first_port), *others = target.nodes
    # The URL form makes redis-py build every node's pool with connection_pool_class
    # (and so bounded and waiting); its scheme (rediss) makes every node's connection
    # TLS. The other listed nodes are extra startup nodes. redis-py drops keywords a
    # cluster node does not take (health_check_interval).
    first = urlunsplit(
        (
            "rediss" if target.tls else "redis",
            f"[{first_host}]:{first_port}" if ":" in first_host else f"{first_host}:{first_port}",
            "",
            "",
            "",
        )
    )
    options.pop("host", None)
    options.pop("port", None)
    options.pop("connection_class", None)
    return RedisCluster(
        url=first,
        startup_nodes=[
            ClusterNode(host, port)  # type: ignore[no-untyped-call, unused-ignore]
            for host, port in others
        ],
        retry=retry,
        connection_pool_class=redis.BlockingConnectionPool,
        max_connections=max_connections,
        timeout=wait,
        **{**common, **options},
    )


def is_cluster(client: object) -> bool:
    """True for a Redis Cluster client: multi-key commands must then stay within a slot."""
    return isinstance(client, RedisCluster)
