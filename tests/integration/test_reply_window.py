"""Script calls sent now and answered later, and a worker's reply window, on a real Redis.

The window lets a cached task's lease claim and write-back ride along with
Celery's own round trips (see tiercel.core.cache.coordinator). What must hold:
an answer read late is the answer; a claim sent ahead never costs a lost
wake-up or a leaked lease; a write-back is in Redis before its answer is read,
and the holder keeps its value locally only once it knows it was stored.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tiercel.core.cache.coordinator import FleetCoordinator
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.encoding.cache_key import CacheKey
from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
from tiercel.core.encoding.entry import Entry
from tiercel.core.encoding.prefixes import channel_name
from tiercel.core.errors import TierUnavailable
from tiercel.core.tier import events, scripts
from tiercel.core.tier.leases import Held, Lease, LeaseManager, Present
from tiercel.core.tier.notifier import Notifier
from tiercel.core.tier.redis_tier import RedisTier
from tiercel.core.tier.renewer import LeaseRenewer
from tiercel.core.tier.sent_script import SentScript

pytestmark = pytest.mark.integration

NS = "rw"
SERIALIZER = Serializer(MsgpackCodec())


def value_key() -> str:
    return f"{NS}:v:fn:1:{{{uuid.uuid4().hex}}}"


def packed(payload: Any) -> bytes:
    return Entry.create(SERIALIZER.dumps(payload), now=time.time(), ttl=60.0).pack()


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture()
def fleet(cache_url: str) -> Iterator[tuple[FleetCoordinator, MultiLevelCache]]:
    """A coordinator and the cache it serves, with its own listener."""
    tier = RedisTier.from_url(cache_url, serializer=SERIALIZER, namespace=NS)
    leases = LeaseManager(tier.client, ttl=5.0, channel=channel_name(NS))
    notifier = Notifier(tier.client, channel=channel_name(NS))
    coordinator = FleetCoordinator(tier, leases, LeaseRenewer(leases), notifier, max_wait=10)
    cache = MultiLevelCache(serializer=SERIALIZER, tier=tier, fleet=coordinator)
    cache.add_level("l1", ttl=60, max_size=100)
    assert notifier.start()
    yield coordinator, cache
    coordinator.close()
    tier.close()


@pytest.fixture()
def other(redis_client: redis.Redis) -> LeaseManager:
    """Another process's lease client."""
    return LeaseManager(redis_client, ttl=5.0, channel=channel_name(NS))


# --- SentScript ---


def test_a_sent_script_is_answered_once_and_gives_its_connection_back(
    cache_url: str,
) -> None:
    # One connection in the pool: a call that kept it would make the next send wait, then
    # fail after the pool's timeout.
    pool = redis.BlockingConnectionPool.from_url(cache_url, max_connections=1, timeout=0.2)
    client = redis.Redis(connection_pool=pool)
    script = client.register_script("return redis.call('INCR', KEYS[1])")
    script(keys=["rw:counter"])  # loaded
    try:
        for expected in range(2, 7):
            sent = SentScript.send(client, script, ["rw:counter"], [])
            assert not sent.answered
            assert sent.answer() == expected
            assert sent.answered and sent.answer() == expected  # read once, kept
    finally:
        client.delete("rw:counter")
        client.close()


def test_a_script_the_server_forgot_runs_once_after_its_noscript_answer(
    redis_client: redis.Redis,
) -> None:
    script = redis_client.register_script("return redis.call('INCR', KEYS[1])")
    redis_client.script_flush()
    sent = SentScript.send(redis_client, script, ["rw:once"], [])
    assert sent.answer() == 1  # NOSCRIPT: not run; loaded and run once
    assert int(redis_client.get("rw:once") or 0) == 1


def test_a_script_whose_answer_never_comes_is_a_tier_failure(cache_url: str) -> None:
    client = redis.Redis.from_url(cache_url, socket_timeout=0.05)
    spin = client.register_script(
        "local n = 0 for i = 1, 50000000 do n = n + 1 end return n"  # ~0.3 s or more
    )
    client.script_load(spin.script)

    def answers() -> bool:
        try:
            return client.ping() is True
        except redis.RedisError:  # busy with the loop still
            return False

    try:
        sent = SentScript.send(client, spin, [], [])
        with pytest.raises(TierUnavailable):
            sent.answer()
        with pytest.raises(TierUnavailable):  # every later call says so too
            sent.answer()
        assert eventually(answers)  # the pool hands out a working connection again
    finally:
        client.close()


def test_sending_to_a_server_that_is_gone_is_a_tier_failure() -> None:
    client = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    with pytest.raises(TierUnavailable):
        SentScript.send(client, scripts.register(client, "release"), ["k"], [1])


# --- claims sent ahead ---


def test_a_claim_sent_ahead_answers_the_next_claim_of_its_key(
    fleet: tuple[FleetCoordinator, MultiLevelCache], monkeypatch: pytest.MonkeyPatch
) -> None:
    coordinator, _ = fleet
    key = value_key()
    coordinator.claim_ahead(key, ttl=60, tags=(), inflight_id="task-1")
    asked: list[str] = []
    monkeypatch.setattr(coordinator.leases, "acquire", lambda *a, **k: asked.append(a[0]))
    got = coordinator.claim(key, ttl=60, tags=(), inflight_id="task-1", unless_present=True)
    assert isinstance(got, Lease) and got.key == key
    assert asked == []  # no second round trip
    assert coordinator.stats()["claims_ahead"] == 1
    assert coordinator.stats()["claims_ahead_unused"] == 0


def test_a_claim_ahead_that_found_the_lease_held_is_asked_again(
    fleet: tuple[FleetCoordinator, MultiLevelCache], other: LeaseManager
) -> None:
    coordinator, _ = fleet
    key = value_key()
    held = other.acquire(key, "elsewhere")
    assert isinstance(held, Lease)
    coordinator.claim_ahead(key, ttl=60, tags=(), inflight_id="task-1")
    ahead = coordinator._replies.ahead
    assert ahead is not None and isinstance(ahead.call.result(), Held)  # answered: held
    # The holder finishes before the caller registers its waiter: that wake-up is gone,
    # so a "held" answer sent before it must not be believed.
    assert other.write_back(held, packed("theirs"), 60)
    got = coordinator.claim(key, ttl=60, tags=(), inflight_id="task-1", unless_present=True)
    assert isinstance(got, Present)


def test_an_unused_claim_ahead_frees_its_lease_and_wakes_its_waiters(
    fleet: tuple[FleetCoordinator, MultiLevelCache], redis_client: redis.Redis
) -> None:
    coordinator, _ = fleet
    key = value_key()
    woken: list[str | None] = []
    with coordinator.waiter(key) as waiter:
        coordinator.claim_ahead(key, ttl=60, tags=(), inflight_id="task-1")
        assert eventually(lambda: redis_client.exists(CacheKey.of(key).lease) == 1)
        coordinator.close_window()  # the body never claimed: answered from a local level
        woken.append(waiter.wait(5.0))
    assert woken == [events.Done.KIND]
    assert redis_client.exists(CacheKey.of(key).lease) == 0
    assert coordinator.stats()["claims_ahead_unused"] == 1


def test_a_claim_of_another_key_gives_the_claim_ahead_up(
    fleet: tuple[FleetCoordinator, MultiLevelCache], redis_client: redis.Redis
) -> None:
    coordinator, _ = fleet
    ahead, asked = value_key(), value_key()
    coordinator.claim_ahead(ahead, ttl=60, tags=(), inflight_id="task-1")
    got = coordinator.claim(asked, ttl=60, tags=(), inflight_id="task-2", unless_present=True)
    assert isinstance(got, Lease) and got.key == asked
    assert redis_client.exists(CacheKey.of(ahead).lease) == 0
    assert redis_client.exists(CacheKey.of(asked).lease) == 1


def test_a_claim_ahead_indexes_the_key_under_its_tags_first(
    fleet: tuple[FleetCoordinator, MultiLevelCache], redis_client: redis.Redis
) -> None:
    coordinator, cache = fleet
    key = value_key()
    coordinator.claim_ahead(key, ttl=60, tags=("reports",), inflight_id="task-1")
    got = coordinator.claim(
        key, ttl=60, tags=("reports",), inflight_id="task-1", unless_present=True
    )
    assert isinstance(got, Lease)
    # A tag invalidation while it computes finds the key and fences the write-back out.
    cache.invalidate_tag("reports")
    outcomes: list[object] = []
    coordinator.write_back(got, packed("outdated"), 60, inflight_id=None, then=outcomes.append)
    assert outcomes == [False]
    assert redis_client.get(key) is None


# --- write-backs answered when the window closes ---


def test_inside_a_window_a_write_back_is_stored_before_its_answer_is_read(
    fleet: tuple[FleetCoordinator, MultiLevelCache], redis_client: redis.Redis
) -> None:
    coordinator, _ = fleet
    key = value_key()
    lease = coordinator.claim(key, ttl=60, tags=(), inflight_id=None, unless_present=True)
    assert isinstance(lease, Lease)
    outcomes: list[object] = []
    coordinator.open_window()
    try:
        coordinator.write_back(lease, packed("v"), 60, inflight_id=None, then=outcomes.append)
        assert outcomes == []  # owed until the window closes
        assert eventually(lambda: redis_client.get(key) is not None)  # other processes see it
    finally:
        coordinator.close_window()
    assert outcomes == [True]


def test_outside_a_window_a_write_back_is_answered_before_it_returns(
    fleet: tuple[FleetCoordinator, MultiLevelCache],
) -> None:
    coordinator, _ = fleet
    lease = coordinator.claim(value_key(), ttl=60, tags=(), inflight_id=None, unless_present=True)
    assert isinstance(lease, Lease)
    outcomes: list[object] = []
    coordinator.write_back(lease, packed("v"), 60, inflight_id=None, then=outcomes.append)
    assert outcomes == [True]


def test_a_thread_owes_one_answer_at_most(
    fleet: tuple[FleetCoordinator, MultiLevelCache],
) -> None:
    coordinator, _ = fleet
    first, second = value_key(), value_key()
    outcomes: list[tuple[str, object]] = []
    coordinator.open_window()
    try:
        lease = coordinator.claim(first, ttl=60, tags=(), inflight_id=None, unless_present=True)
        assert isinstance(lease, Lease)
        coordinator.write_back(
            lease, packed(1), 60, inflight_id=None, then=lambda o: outcomes.append(("1", o))
        )
        # The next fleet call of this thread hears the owed answer first.
        lease = coordinator.claim(second, ttl=60, tags=(), inflight_id=None, unless_present=True)
        assert outcomes == [("1", True)]
        assert isinstance(lease, Lease)
        coordinator.write_back(
            lease, packed(2), 60, inflight_id=None, then=lambda o: outcomes.append(("2", o))
        )
        assert outcomes == [("1", True)]
    finally:
        coordinator.close_window()
    assert outcomes == [("1", True), ("2", True)]


def test_windows_are_per_thread(fleet: tuple[FleetCoordinator, MultiLevelCache]) -> None:
    coordinator, _ = fleet
    coordinator.open_window()
    outcomes: list[object] = []

    def elsewhere() -> None:
        lease = coordinator.claim(
            value_key(), ttl=60, tags=(), inflight_id=None, unless_present=True
        )
        assert isinstance(lease, Lease)
        coordinator.write_back(lease, packed("v"), 60, inflight_id=None, then=outcomes.append)
        outcomes.append("returned")

    try:
        thread = threading.Thread(target=elsewhere)
        thread.start()
        thread.join(10)
        assert outcomes == [True, "returned"]  # that thread had no window open
    finally:
        coordinator.close_window()


def test_the_holder_keeps_its_value_once_the_window_closes(
    fleet: tuple[FleetCoordinator, MultiLevelCache],
) -> None:
    coordinator, cache = fleet
    key = value_key()
    coordinator.open_window()
    try:
        found = cache.get_or_compute(key, compute=lambda: "computed", ttl=60)
        assert found.value == "computed"
        assert cache.lookup(key, remote=False) is None  # its answer is still owed
    finally:
        coordinator.close_window()
    local = cache.lookup(key, remote=False)
    assert local is not None and local.value == "computed"


def test_a_value_invalidated_before_its_answer_is_heard_is_not_kept(
    fleet: tuple[FleetCoordinator, MultiLevelCache],
) -> None:
    coordinator, cache = fleet
    key = value_key()
    coordinator.open_window()
    try:
        cache.get_or_compute(key, compute=lambda: "computed", ttl=60)
        cache.invalidate_local([key])  # an invalidation heard meanwhile moves the epoch
    finally:
        coordinator.close_window()
    assert cache.lookup(key, remote=False) is None


def test_a_claim_ahead_then_a_computation_in_one_window(
    fleet: tuple[FleetCoordinator, MultiLevelCache], redis_client: redis.Redis
) -> None:
    """What a worker does for a claimed task: claim ahead, compute, answers at close."""
    coordinator, cache = fleet
    key = value_key()
    coordinator.open_window()
    try:
        coordinator.claim_ahead(key, ttl=60, tags=(), inflight_id="task-1")
        found = cache.get_or_compute(
            key, compute=lambda: 42, ttl=60, inflight_id="task-1", known_missing=True
        )
        assert (found.value, found.source) == (42, "computed")
    finally:
        coordinator.close_window()
    assert coordinator.stats()["claims_ahead"] == 1
    assert coordinator.stats()["claims_ahead_unused"] == 0
    assert cache.lookup(key, remote=False) is not None
    assert redis_client.exists(CacheKey.of(key).lease) == 0
    assert isinstance(coordinator.leases.acquire(key, unless_present=True), Present)
