"""Leases, fencing, write-back, invalidation and in-flight claims against a real redis-server."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tiercel.core.encoding.cache_key import CacheKey
from tiercel.core.encoding.entry import Entry
from tiercel.core.encoding.prefixes import (
    EPOCH,
    FAILURE,
    FENCE,
    INFLIGHT,
    LEASE,
    REPUBLISH,
    channel_name,
)
from tiercel.core.errors import LeaseError, TierUnavailable
from tiercel.core.tier.leases import Held, Lease, LeaseManager
from tiercel.core.tier.notifier import Notifier
from tiercel.core.tier.renewer import LeaseRenewer

pytestmark = pytest.mark.integration

NS = "t"


def value_key(name: str = "fn") -> str:
    return f"{NS}:v:{name}:1:{{{uuid.uuid4().hex}}}"


def packed(payload: bytes) -> bytes:
    return Entry.create(payload, now=time.time(), ttl=60.0).pack()


def stored_payload(client: redis.Redis, key: str) -> bytes | None:
    raw = client.get(key)
    return None if raw is None else Entry.unpack(raw).payload


@pytest.fixture()
def leases(redis_client: redis.Redis) -> LeaseManager:
    return LeaseManager(redis_client, ttl=5.0)


@pytest.fixture()
def notifier(redis_client: redis.Redis) -> Iterator[Notifier]:
    n = Notifier(redis_client, channel=channel_name(NS))
    assert n.start()
    yield n
    n.stop()


# --- key layout ---


def test_related_keys_share_the_value_keys_hash_tag() -> None:
    key = "ns:app:v:pkg.fn:abc:{0123456789abcdef0123456789abcdef}"
    parts = CacheKey.of(key)
    assert (parts.namespace, parts.name, parts.version) == ("ns:app", "pkg.fn", "abc")
    assert (parts.digest, parts.value, str(parts)) == ("0123456789abcdef0123456789abcdef", key, key)
    assert parts.channel == "ns:app:events"
    for kind, related in (
        (LEASE, parts.lease),
        (FENCE, parts.fence),
        (EPOCH, parts.epoch),
        (INFLIGHT, parts.inflight),
        (FAILURE, parts.failure),
        (REPUBLISH, parts.republish),
    ):
        assert related == f"ns:app:{kind}:{{0123456789abcdef0123456789abcdef}}"
    assert CacheKey.of(key) is parts, "parsed once, then kept"
    assert CacheKey.build("ns:app", "pkg.fn", "abc", parts.digest) == parts
    for bad in (
        "plain",
        "ns:v:fn:1:nodigest",
        "ns:x:fn:1:{abc}",
        "ns:v:fn:1:{}",
        "ns:v:fn1{abc}",
        "ns:v:fn:1:{abc}:after",
    ):
        with pytest.raises(ValueError, match="not a tiercel value key"):
            CacheKey.of(bad)


# --- acquire / release ---


def test_acquire_is_exclusive_under_a_race(redis_client: redis.Redis) -> None:
    key = value_key()
    managers = [LeaseManager(redis_client, ttl=10.0) for _ in range(50)]
    barrier = threading.Barrier(50)
    results: list[Lease | Held] = []
    lock = threading.Lock()

    def race(manager: LeaseManager) -> None:
        barrier.wait()
        got = manager.acquire(key)
        with lock:
            results.append(got)

    threads = [threading.Thread(target=race, args=(m,)) for m in managers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [r for r in results if isinstance(r, Lease)]
    held = [r for r in results if isinstance(r, Held)]
    assert len(won) == 1
    assert len(held) == 49
    assert all(0 < h.holder_ttl <= 10.0 for h in held)


def test_release_only_if_ours_and_then_the_next_acquire_succeeds(leases: LeaseManager) -> None:
    key = value_key()
    first = leases.acquire(key)
    assert isinstance(first, Lease)
    forged = Lease(key, first.token + 1, first.epoch, first.ttl, first.acquired_at)
    assert not leases.release(forged)
    assert isinstance(leases.acquire(key), Held)
    assert leases.release(first)
    assert not leases.release(first)
    second = leases.acquire(key)
    assert isinstance(second, Lease)
    assert second.token > first.token
    assert second.epoch == first.epoch  # no invalidation in between


def test_lease_value_names_the_owner(leases: LeaseManager, redis_client: redis.Redis) -> None:
    key = value_key()
    lease = leases.acquire(key, owner="node-7:123")
    assert isinstance(lease, Lease)
    assert redis_client.get(CacheKey.of(key).lease) == f"{lease.token}:node-7:123".encode()


def test_a_lease_without_expiry_is_given_one(
    leases: LeaseManager, redis_client: redis.Redis
) -> None:
    key = value_key()
    redis_client.set(CacheKey.of(key).lease, "1:by-hand")
    held = leases.acquire(key)
    assert isinstance(held, Held)
    assert held.holder_ttl == pytest.approx(5.0)
    assert 0 < redis_client.pttl(CacheKey.of(key).lease) <= 5000


# --- fencing and epochs ---


def test_a_stale_holder_cannot_overwrite_a_newer_value(redis_client: redis.Redis) -> None:
    key = value_key()
    manager = LeaseManager(redis_client, ttl=0.2)
    holder_a = manager.acquire(key)
    assert isinstance(holder_a, Lease)
    time.sleep(0.3)  # A stalls past its lease
    holder_b = manager.acquire(key)
    assert isinstance(holder_b, Lease)
    assert holder_b.token > holder_a.token
    assert manager.write_back(holder_b, packed(b"from B"), 60.0)
    assert not manager.write_back(holder_a, packed(b"from A"), 60.0)
    assert stored_payload(redis_client, key) == b"from B"


def test_a_stale_holder_may_store_when_nobody_took_over(redis_client: redis.Redis) -> None:
    key = value_key()
    manager = LeaseManager(redis_client, ttl=0.1)
    lease = manager.acquire(key)
    assert isinstance(lease, Lease)
    time.sleep(0.2)
    assert manager.write_back(lease, packed(b"late but newest"), 60.0)
    assert stored_payload(redis_client, key) == b"late but newest"


def test_invalidation_during_compute_rejects_the_write_back(
    leases: LeaseManager, redis_client: redis.Redis
) -> None:
    key = value_key()
    lease = leases.acquire(key)
    assert isinstance(lease, Lease)
    new_epoch = leases.invalidate(key)
    assert new_epoch > lease.epoch
    assert not leases.write_back(lease, packed(b"stale"), 60.0)
    assert redis_client.get(key) is None
    # the lease was still released, so the next computation can start at once
    fresh = leases.acquire(key)
    assert isinstance(fresh, Lease)
    assert fresh.epoch == new_epoch
    assert leases.write_back(fresh, packed(b"fresh"), 60.0)
    assert stored_payload(redis_client, key) == b"fresh"


def test_lost_fence_and_epoch_keys_only_ever_reject(
    leases: LeaseManager, redis_client: redis.Redis
) -> None:
    # allkeys-lru may evict the counters; a restarted counter must not match a stale lease
    key = value_key()
    lease = leases.acquire(key)
    assert isinstance(lease, Lease)
    redis_client.delete(CacheKey.of(key).epoch)
    assert not leases.write_back(lease, packed(b"x"), 60.0)
    stale = leases.acquire(key)
    assert isinstance(stale, Lease)
    redis_client.delete(CacheKey.of(key).fence, CacheKey.of(key).epoch, CacheKey.of(key).lease)
    newer = leases.acquire(key)
    assert isinstance(newer, Lease)
    assert newer.token > stale.token
    assert newer.epoch > stale.epoch
    assert not leases.write_back(stale, packed(b"stale"), 60.0)
    assert leases.write_back(newer, packed(b"newer"), 60.0)
    assert stored_payload(redis_client, key) == b"newer"


def test_counters_carry_a_bounded_ttl(leases: LeaseManager, redis_client: redis.Redis) -> None:
    key = value_key()
    lease = leases.acquire(key)
    assert isinstance(lease, Lease)
    for related in (CacheKey.of(key).fence, CacheKey.of(key).epoch):
        assert 0 < redis_client.pttl(related) <= 86_400_000


def test_write_back_stores_with_ttl_releases_and_clears_our_inflight(
    leases: LeaseManager, redis_client: redis.Redis
) -> None:
    key = value_key()
    assert leases.claim_inflight(key, "task-1", 60.0) is None
    lease = leases.acquire(key)
    assert isinstance(lease, Lease)
    assert leases.write_back(lease, packed(b"v"), 30.0, inflight_id="task-1")
    assert 0 < redis_client.pttl(key) <= 30_000
    assert redis_client.exists(CacheKey.of(key).lease) == 0
    assert leases.inflight(key) is None
    # someone else's marker survives a write-back
    assert leases.claim_inflight(key, "task-2", 60.0) is None
    again = leases.acquire(key)
    assert isinstance(again, Lease)
    assert leases.write_back(again, packed(b"w"), 30.0, inflight_id="task-1")
    assert leases.inflight(key) == "task-2"


def test_invalidate_removes_value_inflight_and_failure_and_publishes(
    leases: LeaseManager, redis_client: redis.Redis, notifier: Notifier
) -> None:
    from tiercel.core.tier import events

    key = value_key()
    assert leases.invalidate(key) == 0  # nothing ever computed: no epoch needed
    lease = leases.acquire(key)
    assert isinstance(lease, Lease)
    assert leases.write_back(lease, packed(b"v"), 60.0)
    leases.claim_inflight(key, "task-1", 60.0)
    redis_client.set(CacheKey.of(key).failure, b"{}")
    # Read the channel itself: a waiter keeps only the first kind it is woken with, so
    # the earlier messages of this key (its first i|, the write-back's d|) could hide it.
    pubsub = redis_client.pubsub()
    pubsub.subscribe(notifier.channel)
    try:
        confirmed = pubsub.get_message(timeout=2.0)  # before the publish: nothing is missed
        assert confirmed is not None and confirmed["type"] == "subscribe", confirmed
        assert leases.invalidate(key) > lease.epoch
        wanted = events.Invalidated(key).encode().encode()
        heard: list[bytes] = []
        deadline = time.monotonic() + 2.0
        while wanted not in heard and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=deadline - time.monotonic())
            if message is not None:
                heard.append(message["data"])
        assert wanted in heard, heard
    finally:
        pubsub.close()
    assert redis_client.exists(key, CacheKey.of(key).inflight, CacheKey.of(key).failure) == 0


def test_invalidate_keys_bumps_every_epoch_in_one_call(
    leases: LeaseManager, redis_client: redis.Redis
) -> None:
    keys = [value_key() for _ in range(5)]
    running = []
    for key in keys[:3]:
        lease = leases.acquire(key)
        assert isinstance(lease, Lease)
        running.append(lease)
    assert leases.write_back(running[0], packed(b"v"), 60.0)
    computing = leases.acquire(keys[0])
    assert isinstance(computing, Lease)
    running[0] = computing
    removed = leases.invalidate_keys([keys[0].encode(), *keys[1:]])
    assert removed == 1
    for lease in running:
        assert not leases.write_back(lease, packed(b"stale"), 60.0)
    assert redis_client.exists(*keys) == 0


# --- renewal ---


def test_renewer_keeps_a_lease_alive_and_drop_lets_it_expire(redis_client: redis.Redis) -> None:
    key = value_key()
    manager = LeaseManager(redis_client, ttl=0.3)
    renewer = LeaseRenewer(manager, renew_interval=0.1)
    try:
        lease = manager.acquire(key)
        assert isinstance(lease, Lease)
        renewer.hold(lease)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert isinstance(manager.acquire(key), Held)
            time.sleep(0.05)
        assert not renewer.lost(lease)
        renewer.drop(lease)
        time.sleep(0.4)
        assert isinstance(manager.acquire(key), Lease)
    finally:
        renewer.stop()
    assert renewer._thread is not None and not renewer._thread.is_alive()


def test_renewer_marks_a_taken_over_lease_lost(redis_client: redis.Redis) -> None:
    key = value_key()
    manager = LeaseManager(redis_client, ttl=5.0)
    renewer = LeaseRenewer(manager, renew_interval=0.05)
    try:
        lease = manager.acquire(key)
        assert isinstance(lease, Lease)
        with renewer.holding(lease):
            redis_client.delete(CacheKey.of(key).lease)  # expired during a long pause
            usurper = manager.acquire(key)
            assert isinstance(usurper, Lease)
            deadline = time.monotonic() + 2.0
            while not renewer.lost(lease) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert renewer.lost(lease)
            assert not manager.write_back(lease, packed(b"stale"), 60.0)
        assert len(renewer) == 0
        assert manager.release(usurper)
    finally:
        renewer.stop()


def test_renewer_is_bounded_and_refuses_use_after_stop(leases: LeaseManager) -> None:
    renewer = LeaseRenewer(leases, max_leases=2)
    got = [leases.acquire(value_key()) for _ in range(3)]
    held = [g for g in got if isinstance(g, Lease)]
    renewer.hold(held[0])
    renewer.hold(held[1])
    renewer.hold(held[1])  # already held: no new slot
    with pytest.raises(LeaseError, match="max_leases"):
        renewer.hold(held[2])
    renewer.stop()
    with pytest.raises(LeaseError, match="stopped"):
        renewer.hold(held[2])


# --- takeover of a dead holder ---


def test_a_dead_holders_lease_expires_and_exactly_one_waiter_takes_over(
    redis_client: redis.Redis, notifier: Notifier
) -> None:
    key = value_key()
    manager = LeaseManager(redis_client, ttl=0.3)
    dead = manager.acquire(key)  # never renewed, never released
    assert isinstance(dead, Lease)
    takeovers: list[Lease] = []
    served: list[bytes] = []
    lock = threading.Lock()
    barrier = threading.Barrier(10)

    def need_value() -> None:
        barrier.wait()
        with notifier.waiter(key) as waiter:
            while True:
                payload = stored_payload(redis_client, key)
                if payload is not None:
                    with lock:
                        served.append(payload)
                    return
                got = manager.acquire(key)
                if isinstance(got, Lease):
                    with lock:
                        takeovers.append(got)
                    time.sleep(0.05)  # compute
                    assert manager.write_back(got, packed(b"computed once"), 60.0)
                    continue
                waiter.wait(got.holder_ttl + 0.05)

    threads = [threading.Thread(target=need_value) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(takeovers) == 1
    assert takeovers[0].token > dead.token
    assert served == [b"computed once"] * 10


# --- failures ---


def test_publish_failure_wakes_waiters_and_records_the_error(
    leases: LeaseManager, redis_client: redis.Redis, notifier: Notifier
) -> None:
    key = value_key()
    lease = leases.acquire(key)
    assert isinstance(lease, Lease)
    leases.claim_inflight(key, "task-1", 60.0)
    with notifier.waiter(key) as waiter:
        assert leases.publish_failure(lease, ValueError("bad input 42"), inflight_id="task-1")
        assert waiter.wait(2.0) == "f"
    failure = leases.read_failure(key)
    assert failure is not None
    assert failure["type"] == "ValueError"
    assert failure["message"] == "bad input 42"
    assert failure["token"] == lease.token
    assert 0 < redis_client.pttl(CacheKey.of(key).failure) <= 10_000
    assert redis_client.exists(CacheKey.of(key).lease) == 0
    assert leases.inflight(key) is None
    # the next computation starts clean
    assert isinstance(leases.acquire(key), Lease)
    assert leases.read_failure(key) is None


def test_a_fenced_out_holder_cannot_fail_its_successors_waiters(
    redis_client: redis.Redis, notifier: Notifier
) -> None:
    key = value_key()
    manager = LeaseManager(redis_client, ttl=0.1)
    stale = manager.acquire(key)
    assert isinstance(stale, Lease)
    time.sleep(0.15)
    current = manager.acquire(key, ttl=5.0)
    assert isinstance(current, Lease)
    with notifier.waiter(key) as waiter:
        assert not manager.publish_failure(stale, "boom")
        assert waiter.wait(0.2) is None
    assert manager.read_failure(key) is None
    assert redis_client.exists(CacheKey.of(key).lease) == 1


def test_freeing_a_task_that_never_ran_clears_its_marker_and_says_so(
    leases: LeaseManager, notifier: Notifier
) -> None:
    # A revoked or expired task holds no lease, only the in-flight marker its submitter
    # claimed; clients that remember it as in flight hear that it is gone.
    key = value_key()
    assert leases.claim_inflight(key, "task-1", 60.0) is None
    with notifier.waiter(key) as waiter:
        assert not leases.release_abandoned(key, "task-2")  # not its task: nothing changes
        assert waiter.wait(0.2) is None
        assert leases.inflight(key) == "task-1"
        assert not leases.release_abandoned(key, "task-1")  # no lease was held...
        assert waiter.wait(2.0) == "d"  # ...but the marker was cleared, and published
    assert leases.inflight(key) is None


def test_read_failure_ignores_garbage(leases: LeaseManager, redis_client: redis.Redis) -> None:
    key = value_key()
    redis_client.set(CacheKey.of(key).failure, b"\xff not json")
    assert leases.read_failure(key) is None


# --- coalescing at submit ---


def test_concurrent_inflight_claims_have_one_winner(redis_client: redis.Redis) -> None:
    key = value_key()
    manager = LeaseManager(redis_client)
    barrier = threading.Barrier(20)
    results: dict[str, str | None] = {}
    lock = threading.Lock()

    def claim(task_id: str) -> None:
        barrier.wait()
        got = manager.claim_inflight(key, task_id, 60.0)
        with lock:
            results[task_id] = got

    threads = [threading.Thread(target=claim, args=(f"task-{i}",)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [task for task, got in results.items() if got is None]
    assert len(winners) == 1
    assert sorted(got for got in results.values() if got is not None) == [winners[0]] * 19
    assert manager.inflight(key) == winners[0]
    assert not manager.clear_inflight(key, "not-the-winner")
    assert manager.clear_inflight(key, winners[0])
    assert manager.inflight(key) is None


class CountingConnection(redis.Connection):
    """Counts the packets sent: one per round trip (a pipeline packs its commands)."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        super().send_packed_command(command, check_health)


def test_claim_inflight_many_is_one_round_trip(cache_url: str) -> None:
    pool = redis.ConnectionPool.from_url(cache_url, connection_class=CountingConnection)
    client = redis.Redis(connection_pool=pool)
    try:
        manager = LeaseManager(client)
        keys = [value_key() for _ in range(50)]
        assert manager.claim_inflight(keys[0], "early", 60.0) is None  # connects, loads script
        CountingConnection.sends = 0
        results = manager.claim_inflight_many([(k, f"task-{i}") for i, k in enumerate(keys)], 60.0)
        assert CountingConnection.sends == 1
        assert results == ["early"] + [None] * 49
    finally:
        client.close()
        pool.disconnect()


def test_batches_survive_a_flushed_script_cache(
    leases: LeaseManager, redis_client: redis.Redis
) -> None:
    keys = [value_key() for _ in range(3)]
    redis_client.script_flush()
    assert leases.claim_inflight_many([(k, "t") for k in keys], 60.0) == [None] * 3
    redis_client.script_flush()
    assert leases.invalidate_keys(keys) == 0
    assert leases.claim_inflight_many([(k, "u") for k in keys], 60.0) == [None] * 3


def test_redis_trouble_raises_tier_unavailable() -> None:
    client = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    manager = LeaseManager(client)
    with pytest.raises(TierUnavailable, match="lease operation failed"):
        manager.acquire(value_key())
    with pytest.raises(TierUnavailable):
        manager.claim_inflight_many([(value_key(), "t")], 1.0)
    client.close()


# --- tag indexes, in the acquire script (one server) ---


def test_taking_a_lease_indexes_the_key_under_its_tags_in_the_same_script(
    leases: LeaseManager, redis_client: redis.Redis
) -> None:
    from tiercel.core.tier.tag_index import tag_index_key

    key = value_key()
    indexes = [tag_index_key(NS, "a"), tag_index_key(NS, "b")]
    redis_client.sadd(indexes[1], "older")
    redis_client.pexpire(indexes[1], 600_000)  # a longer TTL is never shortened
    assert leases.indexes_tags
    assert isinstance(leases.acquire(key, indexes=indexes, index_ttl=60.0), Lease)
    for index in indexes:
        assert redis_client.sismember(index, key)
    assert 59_000 < redis_client.pttl(indexes[0]) <= 60_000
    assert redis_client.pttl(indexes[1]) > 590_000


def test_a_held_or_present_answer_indexes_nothing(
    leases: LeaseManager, redis_client: redis.Redis
) -> None:
    from tiercel.core.tier.tag_index import tag_index_key

    held, present = value_key(), value_key()
    assert isinstance(leases.acquire(held), Lease)
    redis_client.set(present, packed(b"v"))
    index = tag_index_key(NS, "t")
    assert isinstance(leases.acquire(held, indexes=[index], index_ttl=60.0), Held)
    answer = leases.acquire(present, unless_present=True, indexes=[index], index_ttl=60.0)
    assert not isinstance(answer, (Lease, Held))
    assert redis_client.scard(index) == 0
