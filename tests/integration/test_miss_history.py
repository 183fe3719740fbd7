"""The history records the lease scripts keep, and the miss reasons they name, on real Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from tiercel.core.cache import miss_reasons as why
from tiercel.core.cache.coordinator import FleetCoordinator
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.encoding.cache_key import CacheKey
from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
from tiercel.core.encoding.entry import Entry
from tiercel.core.encoding.prefixes import channel_name
from tiercel.core.tier import history as records
from tiercel.core.tier.leases import Lease, LeaseManager
from tiercel.core.tier.notifier import Notifier
from tiercel.core.tier.redis_tier import RedisTier
from tiercel.core.tier.renewer import LeaseRenewer

pytestmark = pytest.mark.integration

NS = "t"
TASK = "fn"
SERIALIZER = Serializer(MsgpackCodec())


def value_key() -> str:
    return CacheKey.build(NS, TASK, "1", uuid.uuid4().hex).value


def packed() -> bytes:
    return Entry.create(b"payload", now=time.time(), ttl=60.0).pack()


@pytest.fixture()
def leases(redis_client: redis.Redis) -> LeaseManager:
    return LeaseManager(redis_client, ttl=5.0)


def lease_of(leases: LeaseManager, key: str) -> Lease:
    got = leases.acquire(key, unless_present=True)
    assert isinstance(got, Lease)
    return got


def test_a_key_never_stored_has_no_history(leases: LeaseManager) -> None:
    assert lease_of(leases, value_key()).history is None


def test_a_write_records_its_expiry(leases: LeaseManager, redis_client: redis.Redis) -> None:
    key = value_key()
    assert leases.write_back(lease_of(leases, key), packed(), 60.0)
    record_ttl = redis_client.pttl(CacheKey.of(key).history)
    assert 60_000 < record_ttl <= 60_000 + leases.calls.state_ttl_ms  # bounded
    redis_client.delete(key)  # as maxmemory would
    history = lease_of(leases, key).history
    assert history is not None and history.kind == records.WRITTEN
    assert history.expires_ms is not None and history.expires_ms - history.at_ms == 60_000
    assert why.classify(history, None, None) == why.EVICTED_REDIS
    assert why.duplicate_cause(history) == why.VALUE_EVICTED


def test_a_value_past_its_ttl_reads_as_expired(leases: LeaseManager) -> None:
    key = value_key()
    assert leases.write_back(lease_of(leases, key), packed(), 0.05)
    time.sleep(0.1)
    history = lease_of(leases, key).history
    assert history is not None and history.expired
    assert why.classify(history, None, None) == why.EXPIRED_VALUE
    assert why.duplicate_cause(history) is None


def test_invalidation_by_key_and_by_tag_leave_their_kind(leases: LeaseManager) -> None:
    by_key, by_tag = value_key(), value_key()
    leases.invalidate(by_key)
    leases.invalidate_keys([by_tag])
    assert why.classify(lease_of(leases, by_key).history, None, None) == why.INVALIDATED_KEY
    assert why.classify(lease_of(leases, by_tag).history, None, None) == why.INVALIDATED_TAG


def test_a_failure_leaves_error_not_cached(leases: LeaseManager) -> None:
    key = value_key()
    assert leases.publish_failure(lease_of(leases, key), RuntimeError("boom"))
    assert why.classify(lease_of(leases, key).history, None, None) == why.ERROR_NOT_CACHED


@pytest.fixture()
def cache(cache_url: str) -> Iterator[MultiLevelCache]:
    tier = RedisTier.from_url(cache_url, serializer=SERIALIZER, namespace=NS)
    leases = LeaseManager(tier.client, ttl=5.0, channel=channel_name(NS))
    notifier = Notifier(tier.client, channel=channel_name(NS))
    coordinator = FleetCoordinator(tier, leases, LeaseRenewer(leases), notifier, max_wait=10)
    built = MultiLevelCache(serializer=SERIALIZER, tier=tier, fleet=coordinator)
    assert notifier.start()
    yield built
    coordinator.close()
    tier.close()


def test_the_cache_counts_each_reason_through_the_scripts(
    cache: MultiLevelCache, redis_client: redis.Redis
) -> None:
    key = value_key()
    cache.get_or_compute(key, compute=lambda: 1, ttl=60, tags=("t",))
    cache.invalidate(key)
    cache.get_or_compute(key, compute=lambda: 2, ttl=60, tags=("t",))
    cache.invalidate_tag("t")
    cache.get_or_compute(key, compute=lambda: 3, ttl=60, tags=("t",))
    redis_client.delete(key)
    cache.get_or_compute(key, compute=lambda: 4, ttl=60, tags=("t",))
    assert cache.misses.misses() == {
        (TASK, why.FIRST_COMPUTATION): 1,
        (TASK, why.INVALIDATED_KEY): 1,
        (TASK, why.INVALIDATED_TAG): 1,
        (TASK, why.EVICTED_REDIS): 1,
    }
    assert cache.misses.duplicates() == {(TASK, why.VALUE_EVICTED): 1}
