"""RedisTier against a real redis-server (tests/conftest.py starts a private one)."""

from __future__ import annotations

import os
import pickle
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tiercel.core.embedded.redis_server import RedisServer
from tiercel.core.encoding.codecs import MsgpackCodec, Serializer, SignedPickleCodec
from tiercel.core.encoding.entry import Entry
from tiercel.core.errors import TierUnavailable
from tiercel.core.tier.breaker import CircuitBreaker
from tiercel.core.tier.redis_tier import MISSING, RedisTier, generation_key
from tiercel.core.tier.tag_index import tag_drain_key, tag_index_key

pytestmark = pytest.mark.integration

NS = "t"
EXPLODED: list[str] = []


def _explode(marker: str) -> str:
    EXPLODED.append(marker)
    return marker


class Boom:
    """Unpickling this calls _explode: proof that a payload was (or was not) executed."""

    def __reduce__(self) -> tuple[Callable[[str], str], tuple[str]]:
        return (_explode, ("executed",))


@pytest.fixture()
def serializer() -> Serializer:
    return Serializer(MsgpackCodec())


@pytest.fixture()
def tier(cache_url: str, serializer: Serializer) -> Iterator[RedisTier]:
    tier = RedisTier.from_url(cache_url, serializer=serializer, namespace=NS)
    yield tier
    tier.close()


def vkey(name: str) -> str:
    return f"{NS}:v:fn:1:{{{name}}}"


class RoundTrips:
    """Counts connection checkouts from the pool: one per command or per pipeline."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, client: redis.Redis) -> None:
        self.count = 0
        pool = client.connection_pool
        original = pool.get_connection

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(pool, "get_connection", counting)


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


# --- reads and writes ---


@pytest.mark.parametrize(
    "value",
    [
        {"a": [1, 2.5, "x", b"\x00bytes"]},
        "text",
        b"raw",
        12345,
        1.5,
        [1, [2, [3]]],
    ],
)
def test_set_then_get(tier: RedisTier, value: Any) -> None:
    assert tier.set(vkey("k"), value, ttl=60)
    assert tier.get(vkey("k")) == value
    assert tier.stats["hits"] == 1
    assert tier.stats["writes"] == 1


@pytest.mark.parametrize("value", [None, 0, 0.0, "", b"", [], {}, False])
def test_falsey_values_are_hits(tier: RedisTier, value: Any) -> None:
    assert tier.set(vkey("f"), value, ttl=60)
    got = tier.get(vkey("f"))
    assert got is not MISSING
    assert got == value
    assert type(got) is type(value)


def test_missing_key_is_a_miss(tier: RedisTier) -> None:
    assert tier.get(vkey("nothing")) is MISSING
    assert not MISSING
    assert repr(MISSING) == "MISSING"
    assert tier.stats["misses"] == 1


def test_ttl_is_set_in_redis_and_in_the_entry(
    cache_url: str, serializer: Serializer, redis_client: redis.Redis
) -> None:
    tier = RedisTier.from_url(
        cache_url, serializer=serializer, namespace=NS, wall_clock=lambda: 1_000_000.0
    )
    try:
        assert tier.set(vkey("ttl"), "v", ttl=5, tags=("a",), compute_seconds=0.25)
        assert 4000 < redis_client.pttl(vkey("ttl")) <= 5000
        entry = tier.get_entry(vkey("ttl"))
        assert entry is not None
        assert entry.stored_at == 1_000_000.0
        assert entry.remaining_ttl(1_000_001.0) == 4.0
        assert entry.compute_seconds == 0.25
        assert entry.tags == ("a",)
        assert serializer.loads(entry.payload) == "v"
    finally:
        tier.close()


def test_short_ttl_expires(tier: RedisTier, redis_client: redis.Redis) -> None:
    assert tier.set(vkey("short"), 1, ttl=0.05)
    assert 0 < redis_client.pttl(vkey("short")) <= 50
    time.sleep(0.1)
    assert tier.get(vkey("short")) is MISSING


def test_bad_ttl_is_a_caller_error(tier: RedisTier) -> None:
    with pytest.raises(ValueError, match="ttl"):
        tier.set(vkey("k"), 1, ttl=0)


def test_get_many_is_one_mget(
    tier: RedisTier, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [vkey(f"m{i}") for i in range(50)]
    assert tier.set_many({key: i for i, key in enumerate(keys[:40])}, ttl=60) == 40
    redis_client.config_resetstat()
    trips = RoundTrips(monkeypatch, tier.client)
    found = tier.get_many([*keys, vkey("absent")])
    assert trips.count == 1
    calls = command_calls(redis_client)
    assert calls.get("mget") == 1
    assert "get" not in calls
    assert found == {key: i for i, key in enumerate(keys[:40])}
    assert tier.stats["hits"] == 40
    assert tier.stats["misses"] == 11
    assert tier.get_many([]) == {}


def test_set_many_is_one_pipeline(
    tier: RedisTier, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = {vkey(f"s{i}"): {"i": i} for i in range(100)}
    trips = RoundTrips(monkeypatch, tier.client)
    assert tier.set_many(items, ttl=60, tags=("x", "y")) == 100
    assert trips.count == 1
    assert redis_client.scard(tag_index_key(NS, "x")) == 100
    assert tier.get_many(list(items)) == items


def test_a_hit_is_one_round_trip(tier: RedisTier, monkeypatch: pytest.MonkeyPatch) -> None:
    assert tier.set(vkey("one"), "v", ttl=60)
    trips = RoundTrips(monkeypatch, tier.client)
    assert tier.get(vkey("one")) == "v"
    assert trips.count == 1


# --- refusals: oversize, unencodable, corrupt, foreign ---


def test_oversize_is_not_stored(tier: RedisTier, redis_client: redis.Redis) -> None:
    small = RedisTier(tier.client, serializer=tier.serializer, namespace=NS, max_value_bytes=1000)
    assert not small.set(vkey("big"), b"x" * 2000, ttl=60)
    assert small.stats["oversize"] == 1
    assert redis_client.exists(vkey("big")) == 0
    assert small.set(vkey("small"), b"x" * 500, ttl=60)


def test_serializer_size_limit_counts_as_oversize(
    tier: RedisTier, redis_client: redis.Redis
) -> None:
    limited = RedisTier(
        tier.client, serializer=Serializer(MsgpackCodec(), max_bytes=100), namespace=NS
    )
    assert not limited.set(vkey("big"), "y" * 500, ttl=60)
    assert limited.stats["oversize"] == 1
    assert redis_client.exists(vkey("big")) == 0


def test_unencodable_value_is_counted_not_raised(tier: RedisTier) -> None:
    assert not tier.set(vkey("obj"), object(), ttl=60)
    assert tier.stats["unencodable"] == 1


@pytest.mark.parametrize(
    "garbage",
    [
        b"garbage",
        b"",
        b"\x01" * 3,
        Entry(b"not a serializer frame", stored_at=1.0).pack(),
    ],
)
def test_corrupt_entry_is_deleted_and_counted(
    tier: RedisTier, redis_client: redis.Redis, garbage: bytes
) -> None:
    redis_client.set(vkey("bad"), garbage)
    assert tier.get(vkey("bad")) is MISSING
    assert redis_client.exists(vkey("bad")) == 0
    assert tier.stats["corrupt"] == 1
    assert tier.stats["hits"] == 0


def test_corrupt_entries_in_get_many(tier: RedisTier, redis_client: redis.Redis) -> None:
    assert tier.set(vkey("good"), 1, ttl=60)
    redis_client.set(vkey("bad"), b"\xff\xff")
    assert tier.get_many([vkey("good"), vkey("bad")]) == {vkey("good"): 1}
    assert redis_client.exists(vkey("bad")) == 0
    assert tier.stats["corrupt"] == 1


def test_get_entries_is_one_mget_of_raw_entries(
    tier: RedisTier, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert tier.set_many({vkey("e1"): 1, vkey("e2"): 2}, ttl=60, tags=("t",)) == 2
    redis_client.set(vkey("bad"), b"junk")
    trips = RoundTrips(monkeypatch, tier.client)
    entries = tier.get_entries([vkey("e1"), vkey("e2"), vkey("bad"), vkey("absent")])
    assert trips.count == 2  # the MGET, and the compare-and-delete of the corrupt key
    assert {key: tier.serializer.loads(e.payload) for key, e in entries.items()} == {
        vkey("e1"): 1,
        vkey("e2"): 2,
    }
    assert entries[vkey("e1")].tags == ("t",)
    assert redis_client.exists(vkey("bad")) == 0
    assert tier.stats["corrupt"] == 1
    assert tier.stats["misses"] == 1


def test_get_entry_rejects_a_corrupt_envelope(tier: RedisTier, redis_client: redis.Redis) -> None:
    redis_client.set(vkey("bad"), b"\x07junk")
    assert tier.get_entry(vkey("bad")) is None
    assert redis_client.exists(vkey("bad")) == 0
    assert tier.stats["corrupt"] == 1


def test_corrupt_delete_spares_a_value_written_in_between(
    tier: RedisTier, redis_client: redis.Redis
) -> None:
    assert tier.set(vkey("race"), "fresh", ttl=60)
    tier._discard_corrupt(vkey("race"), b"the garbage we read earlier")
    assert tier.get(vkey("race")) == "fresh"


@pytest.mark.parametrize(
    "make_payload",
    [
        pytest.param(lambda: pickle.dumps(Boom()), id="raw-pickle-in-an-entry"),
        pytest.param(
            lambda: Serializer(SignedPickleCodec(["k" * 32])).dumps(Boom()),
            id="signed-pickle-frame",
        ),
    ],
)
def test_pickle_payload_is_never_executed(
    tier: RedisTier, redis_client: redis.Redis, make_payload: Callable[[], bytes]
) -> None:
    EXPLODED.clear()
    redis_client.set(vkey("p1"), Entry(make_payload(), stored_at=1.0).pack())
    redis_client.set(vkey("p2"), pickle.dumps(Boom()))  # not even an entry
    assert tier.get(vkey("p1")) is MISSING
    assert tier.get_many([vkey("p2")]) == {}
    assert EXPLODED == []
    assert redis_client.exists(vkey("p1"), vkey("p2")) == 0
    assert tier.stats["corrupt"] == 2


def test_wrong_type_key_is_an_error_not_a_crash(tier: RedisTier, redis_client: redis.Redis) -> None:
    redis_client.sadd(vkey("set"), "member")
    assert tier.get(vkey("set")) is MISSING
    assert tier.stats["errors"] == 1
    assert tier.breaker.state == "closed"


def test_decode_responses_client_is_refused(cache_url: str, serializer: Serializer) -> None:
    client = redis.Redis.from_url(cache_url, decode_responses=True)
    try:
        with pytest.raises(ValueError, match="decode_responses"):
            RedisTier(client, serializer=serializer, namespace=NS)
    finally:
        client.close()


# --- tags, deletes, generations ---


def test_invalidate_tag_removes_exactly_the_tagged_keys(
    tier: RedisTier, redis_client: redis.Redis
) -> None:
    tagged = {vkey(f"big{i}"): i for i in range(1234)}  # > 500: several SSCAN batches
    other = {vkey(f"other{i}"): i for i in range(20)}
    untagged = {vkey(f"plain{i}"): i for i in range(20)}
    assert tier.set_many(tagged, ttl=60, tags=("big",)) == 1234
    assert tier.set_many(other, ttl=60, tags=("other",)) == 20
    assert tier.set_many(untagged, ttl=60) == 20
    assert tier.set(vkey("both"), "b", ttl=60, tags=("big", "other"))

    assert tier.invalidate_tag("big") == 1235
    assert redis_client.exists(*tagged, vkey("both")) == 0
    assert tier.get_many([*other, *untagged]) == {**other, **untagged}
    assert redis_client.exists(tag_index_key(NS, "big")) == 0
    assert redis_client.keys(f"{tag_index_key(NS, 'big')}*") == []
    assert tier.invalidate_tag("big") == 0
    assert tier.invalidate_tag("never-used") == 0


def test_tag_index_ttl_only_grows(tier: RedisTier, redis_client: redis.Redis) -> None:
    index = tag_index_key(NS, "grow")
    assert tier.set(vkey("a"), 1, ttl=100, tags=("grow",))
    assert 99_000 < redis_client.pttl(index) <= 100_000  # a fresh index gets a TTL
    assert tier.set(vkey("b"), 1, ttl=10, tags=("grow",))
    assert redis_client.pttl(index) > 99_000  # a shorter value does not shorten it
    assert tier.set(vkey("c"), 1, ttl=500, tags=("grow",))
    assert redis_client.pttl(index) > 499_000


def test_tag_index_key_shares_a_hash_slot_with_its_drain(tier: RedisTier) -> None:
    from redis.crc import key_slot

    for tag in ("users", "a}b", "{x}"):
        index = tag_index_key(NS, tag).encode()
        assert key_slot(index) == key_slot(tag_drain_key(NS, tag, "tok").encode())


def test_delete(tier: RedisTier) -> None:
    assert tier.set_many({vkey("d1"): 1, vkey("d2"): 2}, ttl=60) == 2
    assert tier.delete(vkey("d1"), vkey("d2"), vkey("d3")) == 2
    assert tier.get(vkey("d1")) is MISSING
    assert tier.delete() == 0


def test_generation(tier: RedisTier, redis_client: redis.Redis) -> None:
    assert tier.generation("fn") == 0
    assert tier.bump_generation("fn") == 1
    assert tier.bump_generation("fn") == 2
    assert tier.generation("fn") == 2
    assert tier.generation("other") == 0
    assert redis_client.get(generation_key(NS, "fn")) == b"2"
    assert generation_key(NS, "fn") == f"{NS}:gen:fn"


# --- construction and health ---


def test_from_url_builds_a_bounded_pool_without_retries(serializer: Serializer) -> None:
    tier = RedisTier.from_url(
        "rediss://localhost:1/0",
        serializer=serializer,
        namespace=NS,
        max_connections=7,
        socket_timeout=0.25,
    )
    try:
        pool = tier.client.connection_pool
        assert isinstance(pool, redis.BlockingConnectionPool)
        assert pool.max_connections == 7
        assert pool.timeout == 0.25
        assert pool.connection_class is redis.SSLConnection
        kwargs = pool.connection_kwargs
        assert kwargs["socket_timeout"] == 0.25
        assert kwargs["socket_connect_timeout"] == 0.25
        assert kwargs["retry"].get_retries() == 0
    finally:
        tier.close()


def test_ping_and_stats(tier: RedisTier) -> None:
    assert tier.ping()
    assert set(tier.stats) >= {
        "hits",
        "misses",
        "errors",
        "corrupt",
        "oversize",
        "short_circuited",
        "writes",
        "breaker",
    }
    assert tier.stats["breaker"] == "closed"


# --- outages ---


@pytest.fixture()
def own_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def test_stopped_server_costs_little_and_recovers(
    own_server: RedisServer, serializer: Serializer
) -> None:
    breaker = CircuitBreaker(failures=3, reset_after=0.3)
    tier = RedisTier.from_url(
        own_server.url, serializer=serializer, namespace=NS, socket_timeout=0.5, breaker=breaker
    )
    try:
        assert tier.set(vkey("k"), "v", ttl=60)
        own_server.stop()

        # (a) reads answer MISSING and writes False; nothing raises
        for _ in range(3):
            assert tier.get(vkey("k")) is MISSING
        assert breaker.state == "open"
        assert tier.stats["errors"] == 3

        # (b) while open, calls fail fast without touching Redis
        started = time.monotonic()
        for _ in range(100):
            assert tier.get(vkey("k")) is MISSING
        assert time.monotonic() - started < 0.2
        assert not tier.set(vkey("k"), "v", ttl=60)
        assert tier.get_many([vkey("k")]) == {}
        with pytest.raises(TierUnavailable):
            tier.delete(vkey("k"))
        assert tier.stats["short_circuited"] == 103
        assert tier.stats["errors"] == 3
        assert not tier.ping()

        # (c) back on the same port, the tier works again after reset_after
        own_server.restart()
        time.sleep(0.35)
        assert tier.get(vkey("k")) is MISSING  # the probe: a real miss (nothing persisted)
        assert breaker.state == "closed"
        assert tier.set(vkey("k"), "again", ttl=60)
        assert tier.get(vkey("k")) == "again"
    finally:
        tier.close()


def test_hung_server_costs_at_most_failures_timeouts(
    own_server: RedisServer, serializer: Serializer
) -> None:
    """A server that accepts but never answers (SIGSTOP): each call waits socket_timeout."""
    breaker = CircuitBreaker(failures=3, reset_after=0.3)
    tier = RedisTier.from_url(
        own_server.url, serializer=serializer, namespace=NS, socket_timeout=0.2, breaker=breaker
    )
    assert own_server.pid is not None
    try:
        assert tier.set(vkey("k"), "v", ttl=60)
        os.kill(own_server.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            for _ in range(103):
                assert tier.get(vkey("k")) is MISSING
            elapsed = time.monotonic() - started
        finally:
            os.kill(own_server.pid, signal.SIGCONT)
        assert breaker.state == "open"
        assert tier.stats["errors"] == 3
        assert tier.stats["short_circuited"] == 100
        assert elapsed < 3 * 0.2 + 0.5  # three timeouts, then fail-fast
        time.sleep(0.35)
        assert tier.get(vkey("k")) == "v"
        assert breaker.state == "closed"
    finally:
        tier.close()


def test_cache_connections_use_tcp_keepalive_sized_from_the_bound(cache_url: str) -> None:
    import socket

    from tiercel.core.tier.connections import client_from_url, keepalive_options

    assert keepalive_options(1.0)[socket.TCP_KEEPIDLE] == 1  # never below the kernel's 1 s
    assert keepalive_options(30.0)[socket.TCP_KEEPINTVL] == 10
    client = client_from_url(cache_url, keepalive_bound=6.0)
    try:
        assert client.ping()
        pubsub = client.pubsub()  # type: ignore[union-attr]
        pubsub.subscribe("keepalive-check")
        for connection in (client.connection_pool.get_connection(), pubsub.connection):  # type: ignore[union-attr]
            sock = connection._sock
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 2
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        pubsub.close()
    finally:
        client.close()


# --- read or claim: a submit's one round trip ---


def test_read_or_claim_answers_a_stored_value_and_claims_nothing(
    tier: RedisTier, redis_client: redis.Redis
) -> None:
    from tiercel.core.encoding.cache_key import CacheKey

    key = vkey("stored")
    assert tier.set(key, {"v": 1}, ttl=60)
    read = tier.read_or_claim(key, "task-1", 30)
    assert read.state == "stored" and read.entry is not None
    assert tier.serializer.loads(read.entry.payload) == {"v": 1}
    assert redis_client.get(CacheKey.of(key).inflight) is None


def test_read_or_claim_claims_a_missing_key_once(
    tier: RedisTier, redis_client: redis.Redis
) -> None:
    from tiercel.core.encoding.cache_key import CacheKey
    from tiercel.core.tier.redis_tier import InflightRead

    key = vkey("missing")
    assert tier.read_or_claim(key, "task-1", 30) == InflightRead("claimed", task_id="task-1")
    assert tier.read_or_claim(key, "task-2", 30) == InflightRead("joined", task_id="task-1")
    assert 29_000 < redis_client.pttl(CacheKey.of(key).inflight) <= 30_000


def test_read_or_claim_learns_nothing_from_a_corrupt_value_or_an_open_breaker(
    tier: RedisTier, redis_client: redis.Redis
) -> None:
    key = vkey("corrupt")
    redis_client.set(key, b"not an entry")
    assert tier.read_or_claim(key, "task-1", 30).state == "unread"
    assert redis_client.get(key) is None  # the corrupt bytes were deleted
    for _ in range(tier.breaker.failures):
        tier.breaker.record_failure()
    assert tier.read_or_claim(vkey("any"), "task-1", 30).state == "unread"
