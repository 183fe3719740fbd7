"""The cache tier behind Redis Sentinel: a ``redis+sentinel://`` URL finds the master.

One master (with a password) and one Sentinel process start once per module
on free loopback ports (see :mod:`tests.integration.redis_topologies`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from tests.integration.redis_topologies import SentinelProcesses
from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
from tiercel.core.encoding.entry import Entry
from tiercel.core.encoding.prefixes import channel_name
from tiercel.core.errors import ServerError, SettingsError
from tiercel.core.tier.connections import client_from_url, parse_cache_url
from tiercel.core.tier.leases import Held, Lease, LeaseManager
from tiercel.core.tier.notifier import Notifier
from tiercel.core.tier.redis_tier import MISSING, RedisTier
from tiercel.workers.launcher import check_reachable

pytestmark = pytest.mark.integration

NS = "sn"
PASSWORD = "sentinel-master-pw"
SERIALIZER = Serializer(MsgpackCodec())


def value_key() -> str:
    return f"{NS}:v:fn:1:{{{uuid.uuid4().hex}}}"


@pytest.fixture(scope="module")
def sentinel() -> Iterator[SentinelProcesses]:
    with SentinelProcesses("tiercel", password=PASSWORD) as processes:
        yield processes


@pytest.fixture()
def url(sentinel: SentinelProcesses) -> str:
    admin = redis.Redis(host="127.0.0.1", port=sentinel.master.port or 0, password=PASSWORD)
    admin.flushall()
    admin.close()
    return sentinel.url.replace("://", f"://:{PASSWORD}@")


@pytest.fixture()
def tier(url: str) -> Iterator[RedisTier]:
    tier = RedisTier.from_url(url, serializer=SERIALIZER, namespace=NS)
    yield tier
    tier.close()


def test_the_url_names_sentinels_service_and_db() -> None:
    target = parse_cache_url("redis+sentinel://u:p@127.0.0.1:1,[::1]:2/svc/3?socket_timeout=2")
    assert target.kind == "sentinel"
    assert target.nodes == (("127.0.0.1", 1), ("::1", 2))
    assert target.service == "svc"
    options = dict(target.options)
    assert (options["username"], options["password"], options["db"]) == ("u", "p", 3)
    assert options["socket_timeout"] == 2.0
    with pytest.raises(SettingsError, match="service name") as info:
        parse_cache_url("redis+sentinel://u:secret-pw@127.0.0.1:1")
    assert "secret-pw" not in str(info.value)


def test_get_set_and_get_many_through_the_sentinel(tier: RedisTier) -> None:
    keys = [value_key() for _ in range(20)]
    assert tier.set_many({key: index for index, key in enumerate(keys)}, ttl=60, tags=["t"]) == 20
    assert tier.get(keys[3]) == 3
    assert tier.get_many(keys) == {key: index for index, key in enumerate(keys)}
    assert tier.invalidate_tag("t") == 20
    assert tier.get(keys[3]) is MISSING
    assert tier.stats["errors"] == 0


def test_leases_and_notifications_through_the_sentinel(tier: RedisTier) -> None:
    leases = LeaseManager(tier.client, ttl=5.0)
    notifier = Notifier(tier.client, channel=channel_name(NS))
    assert notifier.start()
    try:
        key = value_key()
        lease = leases.acquire(key)
        assert isinstance(lease, Lease)
        assert isinstance(leases.acquire(key), Held)
        entry = Entry.create(SERIALIZER.dumps("v"), now=time.time(), ttl=60).pack()
        with notifier.waiter(key) as waiter:
            threading.Timer(0.05, leases.write_back, (lease, entry, 60)).start()
            assert waiter.wait(5.0) == "d"
        assert tier.get(key) == "v"
    finally:
        notifier.stop()


def test_the_db_in_the_url_is_used(sentinel: SentinelProcesses, url: str) -> None:
    tier = RedisTier.from_url(url + "/2", serializer=SERIALIZER, namespace=NS)
    direct = redis.Redis(host="127.0.0.1", port=sentinel.master.port or 0, db=2, password=PASSWORD)
    try:
        key = value_key()
        assert tier.set(key, 1, ttl=60)
        assert direct.exists(key) == 1
    finally:
        tier.close()
        direct.close()


def test_the_master_pool_is_bounded_and_waits(url: str) -> None:
    client = client_from_url(url, max_connections=2, pool_timeout=0.2)
    assert isinstance(client, redis.Redis)
    pool = client.connection_pool
    assert isinstance(pool, redis.BlockingConnectionPool)
    held = [pool.get_connection(), pool.get_connection()]
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError, match="No connection available"):
        pool.get_connection()
    assert time.monotonic() - started >= 0.18  # it waited, then gave up
    for connection in held:
        pool.release(connection)
    assert client.ping()
    client.close()


def test_a_wrong_password_is_a_clear_error_without_the_password(
    sentinel: SentinelProcesses,
) -> None:
    url = sentinel.url.replace("://", "://:not-the-password@")
    client = client_from_url(url)
    with pytest.raises(redis.AuthenticationError) as info:
        client.ping()
    assert "not-the-password" not in str(info.value)
    client.close()
    tier = RedisTier.from_url(url, serializer=SERIALIZER, namespace=NS)
    assert tier.get(value_key()) is MISSING  # reads never raise
    assert tier.stats["errors"] == 1
    tier.close()
    with pytest.raises(ServerError) as reach:
        check_reachable("cache", url, timeout=1.0)
    assert "not-the-password" not in str(reach.value)
    assert "***" in str(reach.value)


def test_check_reachable_finds_the_master(url: str, sentinel: SentinelProcesses) -> None:
    check_reachable("cache", url, timeout=1.0)
    unknown = url.replace("/tiercel", "/no-such-service")
    with pytest.raises(ServerError, match="no-such-service") as info:
        check_reachable("cache", unknown, timeout=1.0)
    assert PASSWORD not in str(info.value)


def test_a_sentinel_with_its_own_password() -> None:
    with SentinelProcesses(
        "guarded", password=PASSWORD, sentinel_password="sentinel-own-pw"
    ) as guarded:
        url = guarded.url.replace("://", f"://:{PASSWORD}@")
        tier = RedisTier.from_url(
            url + "?sentinel_password=sentinel-own-pw", serializer=SERIALIZER, namespace=NS
        )
        try:
            key = value_key()
            assert tier.set(key, "guarded", ttl=60)
            assert tier.get(key) == "guarded"
        finally:
            tier.close()
        refused = client_from_url(url)  # no sentinel_password: the Sentinel refuses
        with pytest.raises(redis.ConnectionError, match="No master found"):
            refused.ping()
        refused.close()
        with pytest.raises(ServerError) as info:
            check_reachable("cache", url + "?sentinel_password=wrong-sentinel-pw", timeout=1.0)
        assert "wrong-sentinel-pw" not in str(info.value)
        assert PASSWORD not in str(info.value)
