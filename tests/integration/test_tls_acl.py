"""The cache tier over TLS (``rediss://``) and as an ACL user with a password.

One redis-server 7 with TLS starts per module, with a CA and a server
certificate made in Python (``trustme``) for the test. Its plain port is for
administration: the ACL users are made there. Without a TLS-capable
redis-server these tests are reported as not run (:mod:`tests.services`).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from redis.cluster import RedisCluster

from tests.integration.redis_topologies import ClusterProcesses, TLSServer
from tiercel.core.cache.coordinator import FleetCoordinator
from tiercel.core.cache.lookup import SOURCE_COMPUTED
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
from tiercel.core.encoding.prefixes import channel_name
from tiercel.core.errors import ServerError
from tiercel.core.local.memory_level import MemoryLevel
from tiercel.core.tier.connections import client_from_url
from tiercel.core.tier.leases import Lease, LeaseManager
from tiercel.core.tier.notifier import Notifier
from tiercel.core.tier.redis_tier import MISSING, RedisTier
from tiercel.core.tier.renewer import LeaseRenewer
from tiercel.workers.launcher import check_reachable

pytestmark = pytest.mark.integration

SERIALIZER = Serializer(MsgpackCodec())
APP_PASSWORD = "app-secret-pw"
OTHER_PASSWORD = "other-secret-pw"


def value_key(namespace: str) -> str:
    return f"{namespace}:v:fn:1:{{{uuid.uuid4().hex}}}"


@pytest.fixture(scope="module")
def server() -> Iterator[TLSServer]:
    with TLSServer() as tls:
        admin = admin_client(tls)
        # app may use tiercel:* keys and channels, other only other:*
        admin.execute_command(
            "ACL", "SETUSER", "app", "on", f">{APP_PASSWORD}", "~tiercel:*", "&*", "+@all"
        )
        admin.execute_command(
            "ACL", "SETUSER", "other", "on", f">{OTHER_PASSWORD}", "~other:*", "&other:*", "+@all"
        )
        admin.close()
        yield tls


def admin_client(server: TLSServer) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=server.server.port or 0)


@pytest.fixture(autouse=True)
def _flush(server: TLSServer) -> None:
    admin = admin_client(server)
    admin.flushall()
    admin.close()


def plain_url(server: TLSServer, userinfo: str) -> str:
    return f"redis://{userinfo}@127.0.0.1:{server.server.port}/0"


# --- TLS ---


def test_a_rediss_url_with_the_ca_reaches_the_tier(server: TLSServer) -> None:
    tier = RedisTier.from_url(server.tls_url(), serializer=SERIALIZER, namespace="tiercel")
    try:
        key = value_key("tiercel")
        assert tier.set(key, {"over": "tls"}, ttl=60)
        assert tier.get(key) == {"over": "tls"}
        connection = tier.client.get_connection_kwargs()
        assert connection["ssl_ca_certs"] == str(server.ca)
        assert isinstance(tier.client, redis.Redis)
        assert tier.client.connection_pool.connection_class is redis.SSLConnection
    finally:
        tier.close()


def test_a_multilevel_round_trip_over_tls_with_leases_and_notifications(server: TLSServer) -> None:
    tier = RedisTier.from_url(server.tls_url(), serializer=SERIALIZER, namespace="tiercel")
    leases = LeaseManager(tier.client, ttl=5.0, channel=channel_name("tiercel"))
    notifier = Notifier(
        tier.client,
        channel=channel_name("tiercel"),
        on_invalidate=lambda key: cache.invalidate_local([key]),
    )
    fleet = FleetCoordinator(tier, leases, LeaseRenewer(leases), notifier)
    cache = MultiLevelCache(
        serializer=SERIALIZER, levels=[MemoryLevel("l1", max_entries=10)], tier=tier, fleet=fleet
    )
    assert notifier.start()
    try:
        key = value_key("tiercel")
        first = cache.get_or_compute(key, compute=lambda: [1, 2, 3], ttl=60)
        assert (first.value, first.source) == ([1, 2, 3], SOURCE_COMPUTED)
        assert cache.get_or_compute(key, compute=lambda: "again", ttl=60).source == "l1"
        fresh = MultiLevelCache(serializer=SERIALIZER, tier=tier)
        found = fresh.lookup(key)
        assert found is not None
        assert (found.value, found.source) == ([1, 2, 3], "redis")
    finally:
        fleet.close()
        tier.close()


def test_tls_without_the_ca_fails_verification(server: TLSServer) -> None:
    url = f"rediss://127.0.0.1:{server.tls_port}/0?ssl_cert_reqs=required"
    client = client_from_url(url, socket_timeout=2.0)
    with pytest.raises(redis.ConnectionError, match=r"(?i)certificate verify failed"):
        client.ping()
    client.close()
    tier = RedisTier.from_url(url, serializer=SERIALIZER, namespace="tiercel")
    assert tier.get(value_key("tiercel")) is MISSING
    assert tier.stats["errors"] == 1
    tier.close()


def test_plain_tcp_to_the_tls_port_fails(server: TLSServer) -> None:
    client = client_from_url(f"redis://127.0.0.1:{server.tls_port}/0", socket_timeout=1.0)
    with pytest.raises(redis.RedisError):
        client.ping()
    client.close()


# --- ACL ---


def test_an_acl_user_with_a_password_works(server: TLSServer) -> None:
    tier = RedisTier.from_url(
        plain_url(server, f"app:{APP_PASSWORD}"), serializer=SERIALIZER, namespace="tiercel"
    )
    leases = LeaseManager(tier.client, ttl=5.0)
    notifier = Notifier(tier.client, channel=channel_name("tiercel"))
    assert notifier.start()
    try:
        assert tier.client.acl_whoami() in ("app", b"app")
        key = value_key("tiercel")
        assert tier.set(key, 1, ttl=60, tags=["t"])
        assert tier.get_many([key]) == {key: 1}
        lease = leases.acquire(key)
        assert isinstance(lease, Lease)
        assert leases.invalidate(key) > 0  # scripts touch only tiercel:* keys
        assert tier.invalidate_tag("t") == 0
        assert tier.bump_generation("fn") == 1
        assert tier.stats["errors"] == 0
    finally:
        notifier.stop()
        tier.close()


def test_acl_user_over_tls(server: TLSServer) -> None:
    tier = RedisTier.from_url(
        server.tls_url(f"app:{APP_PASSWORD}"), serializer=SERIALIZER, namespace="tiercel"
    )
    try:
        assert tier.client.acl_whoami() in ("app", b"app")
        key = value_key("tiercel")
        assert tier.set(key, "both", ttl=60)
        assert tier.get(key) == "both"
    finally:
        tier.close()


def test_a_wrong_password_is_a_clear_error_without_the_password(server: TLSServer) -> None:
    url = plain_url(server, "app:wrong-secret-pw")
    client = client_from_url(url)
    with pytest.raises(redis.AuthenticationError, match="invalid username-password") as info:
        client.ping()
    assert "wrong-secret-pw" not in str(info.value)
    client.close()
    tier = RedisTier.from_url(url, serializer=SERIALIZER, namespace="tiercel")
    assert tier.get(value_key("tiercel")) is MISSING
    assert not tier.ping()
    tier.close()
    with pytest.raises(ServerError) as reach:
        check_reachable("cache", url, timeout=1.0)
    message = str(reach.value)
    assert "wrong-secret-pw" not in message
    assert "app:***@" in message
    assert "invalid username-password" in message


def test_two_namespaces_cannot_read_each_others_keys(server: TLSServer) -> None:
    app = RedisTier.from_url(
        plain_url(server, f"app:{APP_PASSWORD}"), serializer=SERIALIZER, namespace="tiercel"
    )
    other = RedisTier.from_url(
        plain_url(server, f"other:{OTHER_PASSWORD}"), serializer=SERIALIZER, namespace="other"
    )
    try:
        mine, theirs = value_key("tiercel"), value_key("other")
        assert app.set(mine, "app's", ttl=60)
        assert other.set(theirs, "other's", ttl=60)
        assert other.get(theirs) == "other's"
        with pytest.raises(redis.exceptions.NoPermissionError):
            other.client.get(mine)
        with pytest.raises(redis.exceptions.NoPermissionError):
            app.client.get(theirs)
        assert other.get(mine) is MISSING  # a tier read never raises
        assert not other.set(mine, "overwrite", ttl=60)
        assert app.get(mine) == "app's"
        # a tier in a namespace its user may not touch fails writes, never raises
        wrong = RedisTier.from_url(
            plain_url(server, f"other:{OTHER_PASSWORD}"), serializer=SERIALIZER, namespace="tiercel"
        )
        assert not wrong.set(value_key("tiercel"), 1, ttl=60)
        wrong.close()
        with pytest.raises(redis.exceptions.NoPermissionError):
            other.client.publish(channel_name("tiercel"), "i|x")
    finally:
        app.close()
        other.close()


def test_check_reachable_over_tls_and_acl(server: TLSServer) -> None:
    started = time.monotonic()
    check_reachable("cache", server.tls_url(f"app:{APP_PASSWORD}"), timeout=1.0)
    assert time.monotonic() - started < 1.0


# --- TLS on a cluster ---


def test_a_rediss_cluster_url_reaches_every_node_over_tls(server: TLSServer) -> None:
    with ClusterProcesses(masters=3, certs=server.certs) as cluster:
        tier = RedisTier.from_url(cluster.tls_url(), serializer=SERIALIZER, namespace="tiercel")
        try:
            client = tier.client
            assert isinstance(client, RedisCluster)
            assert {node.port for node in client.get_primaries()} == set(cluster.tls_ports)
            items = {value_key("tiercel"): index for index in range(60)}
            assert tier.set_many(items, ttl=60, tags=["t"]) == 60
            assert tier.get_many(list(items)) == items
            leases = LeaseManager(client, ttl=5.0)
            key = next(iter(items))
            lease = leases.acquire(key)
            assert isinstance(lease, Lease)
            assert leases.invalidate(key) > 0
            assert tier.invalidate_tag("t") == 59
            assert tier.stats["errors"] == 0
        finally:
            tier.close()
