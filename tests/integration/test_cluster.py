"""The cache tier on a 3-master Redis Cluster of real redis-server processes.

The cluster starts once per module on free loopback ports (see
:mod:`tests.integration.redis_topologies`) and is flushed before each test.
Keys are spread over all three masters on purpose: each value key is its own
hash slot (``{digest}``), so multi-key reads, pipelines, tag drains and
notifications all cross nodes here. The nodes need a redis-server >= 7;
without one these tests are reported as not run (:mod:`tests.services`).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from tests.core.cache_contract import CHECKS
from tests.integration.redis_topologies import ClusterProcesses
from tests.integration.test_cache_contract import MultiLevelStore, TierStore
from tiercel.core.cache.coordinator import FleetCoordinator
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.embedded.redis_server import free_port
from tiercel.core.encoding.cache_key import CacheKey
from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
from tiercel.core.encoding.entry import Entry
from tiercel.core.encoding.prefixes import channel_name
from tiercel.core.errors import ServerError, SettingsError
from tiercel.core.local.memory_level import MemoryLevel
from tiercel.core.tier.connections import client_from_url, is_cluster, parse_cache_url
from tiercel.core.tier.leases import Held, Lease, LeaseManager
from tiercel.core.tier.notifier import Notifier
from tiercel.core.tier.redis_tier import MISSING, RedisTier
from tiercel.core.tier.renewer import LeaseRenewer
from tiercel.core.tier.tag_index import tag_drain_key, tag_index_key
from tiercel.workers.launcher import check_reachable

pytestmark = pytest.mark.integration

NS = "cl"
SERIALIZER = Serializer(MsgpackCodec())
ROOT = Path(__file__).resolve().parents[2]


def value_key(name: str = "fn") -> str:
    return f"{NS}:v:{name}:1:{{{uuid.uuid4().hex}}}"


def packed(value: Any) -> bytes:
    return Entry.create(SERIALIZER.dumps(value), now=time.time(), ttl=60.0).pack()


def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # polling a test condition, not production code
    return True


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterProcesses]:
    with ClusterProcesses(masters=3) as processes:
        yield processes


@pytest.fixture()
def cluster_url(cluster: ClusterProcesses) -> str:
    for index in range(cluster.masters):
        node = cluster.node_client(index)
        node.flushall()
        node.close()
    return cluster.url


@pytest.fixture()
def tier(cluster_url: str) -> Iterator[RedisTier]:
    tier = RedisTier.from_url(cluster_url, serializer=SERIALIZER, namespace=NS)
    yield tier
    tier.close()


def node_of(client: object, key: str) -> int:
    """The port of the master owning ``key`` (``client`` is a cluster client)."""
    assert isinstance(client, RedisCluster)
    return int(client.nodes_manager.get_node_from_slot(key_slot(key.encode())).port)


def keys_per_node(cluster: ClusterProcesses) -> list[int]:
    counts = []
    for index in range(cluster.masters):
        node = cluster.node_client(index)
        counts.append(int(node.dbsize()))
        node.close()
    return counts


# --- the client ---


def test_the_url_names_every_startup_node_and_pools_are_bounded_per_node(
    cluster: ClusterProcesses, tier: RedisTier
) -> None:
    target = parse_cache_url(cluster.url)
    assert target.kind == "cluster"
    assert [port for _, port in target.nodes] == cluster.ports
    client = tier.client
    assert is_cluster(client)
    assert isinstance(client, RedisCluster)
    assert {node.port for node in client.get_primaries()} == set(cluster.ports)
    for node in client.get_primaries():
        pool = node.redis_connection.connection_pool
        assert isinstance(pool, redis.BlockingConnectionPool)
        assert pool.max_connections == 32


@pytest.mark.parametrize(
    "url, problem",
    [
        ("redis+cluster://app:pw-in-url@127.0.0.1:7000/2", "only database 0"),
        ("redis+cluster://app:pw-in-url@", "no host:port"),
        ("redis+cluster://app:pw-in-url@127.0.0.1:notaport", "is not host:port"),
        ("redis+cluster://app:pw-in-url@127.0.0.1:7000?socket_timeout=soon", "socket_timeout"),
        ("memcached://app:pw-in-url@127.0.0.1:7000", "expected a URL starting with"),
    ],
)
def test_malformed_urls_are_clear_errors_without_the_password(url: str, problem: str) -> None:
    with pytest.raises(SettingsError, match=problem) as info:
        parse_cache_url(url)
    assert "pw-in-url" not in str(info.value)


def test_cluster_url_options_reach_every_node() -> None:
    target = parse_cache_url("rediss+cluster://u:p%40ss@[::1]:7000,host-b?ssl_cert_reqs=none")
    assert (target.kind, target.tls) == ("cluster", True)
    assert target.nodes == (("::1", 7000), ("host-b", 6379))
    options = dict(target.options)
    assert (options["username"], options["password"]) == ("u", "p@ss")
    assert options["ssl_cert_reqs"] == "none"


def test_each_node_pool_waits_for_a_free_connection_then_gives_up(cluster_url: str) -> None:
    client = client_from_url(cluster_url, max_connections=1, pool_timeout=0.2)
    assert isinstance(client, RedisCluster)
    try:
        key = value_key()
        client.set(key, b"1")
        pool = client.get_node_from_key(key).redis_connection.connection_pool
        held = pool.get_connection()
        threading.Timer(0.05, pool.release, (held,)).start()
        assert client.get(key) == b"1"  # waited for the release
        held = pool.get_connection()
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError, match="No connection available"):
            client.get(key)
        assert time.monotonic() - started >= 0.18
        pool.release(held)
        assert client.get(key) == b"1"
    finally:
        client.close()


def test_a_runtime_from_settings_runs_on_the_cluster(cluster_url: str) -> None:
    from tiercel.core.settings import Settings
    from tiercel.tasks.runtime import Runtime

    runtime = Runtime(Settings(cache_url=cluster_url, namespace=NS))
    try:
        assert runtime.start(listen_timeout=5.0).listening
        key = value_key()
        first = runtime.cache.get_or_compute(key, compute=lambda: "computed once", ttl=60)
        assert first.source == "computed"
        assert runtime.tier.get(key) == "computed once"
        runtime.cache.invalidate(key)
        assert runtime.tier.get(key) is MISSING
    finally:
        runtime.close()


def test_any_one_startup_node_is_enough(cluster: ClusterProcesses, cluster_url: str) -> None:
    url = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{cluster.ports[2]}"
    tier = RedisTier.from_url(url, serializer=SERIALIZER, namespace=NS)
    try:
        key = value_key()
        assert tier.set(key, "v", ttl=10)
        assert tier.get(key) == "v"
    finally:
        tier.close()


# --- the shared contract ---


@pytest.mark.parametrize("kind", ["redis-tier", "multilevel-redis"])
@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_contract(cluster_url: str, kind: str, check: Callable[[Any], None]) -> None:
    tier = RedisTier.from_url(cluster_url, serializer=SERIALIZER, namespace="contract")
    try:
        store: Any = (
            TierStore(tier)
            if kind == "redis-tier"
            else MultiLevelStore(
                MultiLevelCache(
                    serializer=SERIALIZER, levels=[MemoryLevel("l1", max_entries=100)], tier=tier
                )
            )
        )
        check(store)
    finally:
        tier.close()


# --- multi-key operations across slots ---


def test_set_many_and_get_many_span_every_node(cluster: ClusterProcesses, tier: RedisTier) -> None:
    items = {value_key(): index for index in range(300)}
    assert tier.set_many(items, ttl=60) == 300
    assert all(count > 0 for count in keys_per_node(cluster))  # spread over all masters
    missing = [value_key() for _ in range(20)]
    found = tier.get_many([*items, *missing])
    assert found == items
    assert tier.stats["errors"] == 0
    entries = tier.get_entries(list(items)[:50])
    assert {key: SERIALIZER.loads(e.payload) for key, e in entries.items()} == {
        key: items[key] for key in list(items)[:50]
    }


def test_tag_index_and_its_drain_copy_share_a_slot() -> None:
    index = tag_index_key(NS, "reports")
    assert key_slot(index.encode()) == key_slot(tag_drain_key(NS, "reports", "x").encode())


def test_tag_invalidation_drains_keys_spread_over_slots(
    cluster: ClusterProcesses, tier: RedisTier
) -> None:
    tagged = {value_key(): index for index in range(1200)}  # > one SSCAN batch
    other = {value_key(): "keep" for _ in range(10)}
    assert tier.set_many(tagged, ttl=60, tags=["t1"]) == 1200
    assert tier.set_many(other, ttl=60, tags=["t2"]) == 10
    assert tier.invalidate_tag("t1") == 1200
    assert tier.get_many(list(tagged)) == {}
    assert tier.get_many(list(other)) == other
    assert tier.invalidate_tag("t1") == 0


def test_tag_invalidation_through_leases_bumps_every_epoch(tier: RedisTier) -> None:
    leases = LeaseManager(tier.client, ttl=5.0)
    keys = [value_key() for _ in range(60)]
    held = [leases.acquire(key) for key in keys]
    assert all(isinstance(lease, Lease) for lease in held)
    tier.index_tags(keys[0], ["t"], ttl=60)
    for key in keys[1:]:
        tier.index_tags(key, ["t"], ttl=60)
    removed = tier.invalidate_tag("t", remove=leases.invalidate_keys)
    assert removed == 0  # nothing was stored yet, but every computation is now fenced out
    for lease in held:
        assert isinstance(lease, Lease)
        assert not leases.write_back(lease, packed("stale"), 60)
    assert tier.get_many(keys) == {}


def test_delete_many_keys_across_slots(tier: RedisTier) -> None:
    keys = [value_key() for _ in range(50)]
    tier.set_many(dict.fromkeys(keys, 1), ttl=60)
    assert tier.delete(*keys, value_key()) == 50


def test_generations(tier: RedisTier) -> None:
    assert tier.generation("fn") == 0
    assert tier.bump_generation("fn") == 1
    assert tier.generation("fn") == 1


# --- leases and in-flight claims ---


def flush_scripts(cluster: ClusterProcesses) -> None:
    for index in range(cluster.masters):
        node = cluster.node_client(index)
        node.script_flush()
        node.close()


def test_lease_acquire_write_back_invalidate(cluster: ClusterProcesses, tier: RedisTier) -> None:
    leases = LeaseManager(tier.client, ttl=5.0)
    key = value_key()
    lease = leases.acquire(key)
    assert isinstance(lease, Lease)
    assert isinstance(leases.acquire(key), Held)
    assert leases.write_back(lease, packed("v1"), 60)
    assert tier.get(key) == "v1"
    client = redis.Redis(host="127.0.0.1", port=node_of(tier.client, key))
    try:
        # lease, fence, epoch and value live on one node: one script touched them all
        assert client.exists(key, CacheKey.of(key).epoch) == 2
        assert client.exists(CacheKey.of(key).lease) == 0  # released by the write-back
    finally:
        client.close()
    second = leases.acquire(key)
    assert isinstance(second, Lease)
    assert leases.invalidate(key) > 0
    assert tier.get(key) is MISSING
    assert not leases.write_back(second, packed("stale"), 60)  # fenced out
    assert tier.get(key) is MISSING


def test_scripts_reload_on_every_node_after_a_flush(
    cluster: ClusterProcesses, tier: RedisTier
) -> None:
    leases = LeaseManager(tier.client, ttl=5.0)
    keys = [value_key() for _ in range(30)]
    held = [leases.acquire(key) for key in keys]
    flush_scripts(cluster)  # a failover or restart forgets scripts: NOSCRIPT, then reload
    renewed = leases.renew_many([lease for lease in held if isinstance(lease, Lease)])
    assert renewed == [True] * 30
    flush_scripts(cluster)
    lease = held[0]
    assert isinstance(lease, Lease)
    assert leases.write_back(lease, packed(1), 60)  # Script.__call__'s own reload path


def test_claim_inflight_many_across_slots(cluster: ClusterProcesses, tier: RedisTier) -> None:
    leases = LeaseManager(tier.client, ttl=5.0)
    keys = [value_key() for _ in range(40)]
    flush_scripts(cluster)
    first = leases.claim_inflight_many([(key, f"task-{i}") for i, key in enumerate(keys)], 30)
    assert first == [None] * 40
    again = leases.claim_inflight_many([(key, "other") for key in keys], 30)
    assert again == [f"task-{i}" for i in range(40)]
    assert leases.inflight(keys[3]) == "task-3"
    assert tier.client.exists(CacheKey.of(keys[3]).inflight) == 1
    assert leases.invalidate_keys(keys) == 0
    assert leases.inflight(keys[3]) is None


# --- notifications across nodes ---


def test_notifier_hears_messages_published_through_every_node(
    cluster: ClusterProcesses, tier: RedisTier
) -> None:
    heard: list[str] = []
    notifier = Notifier(tier.client, channel=channel_name(NS), on_invalidate=heard.append)
    assert notifier.start()
    try:
        for index in range(cluster.masters):
            node = cluster.node_client(index)
            node.publish(channel_name(NS), f"i|from-node-{index}")
            node.close()
        assert eventually(lambda: len(heard) == cluster.masters), heard
        assert sorted(heard) == [f"from-node-{i}" for i in range(cluster.masters)]
    finally:
        notifier.stop()


def test_probes_are_answered_on_a_cluster_subscription(tier: RedisTier) -> None:
    from tiercel.core.tier.liveness import ChannelLiveness

    liveness = ChannelLiveness(0.6)
    notifier = Notifier(tier.client, channel=channel_name(NS), liveness=liveness)
    assert notifier.start()
    try:
        started = time.monotonic()
        while time.monotonic() - started < 1.2:
            assert liveness.trusted()
            time.sleep(0.01)
        assert notifier.answers >= 5
        assert notifier.silences == 0 and liveness.lapses == 0
    finally:
        notifier.stop()


def test_a_write_back_on_another_node_wakes_the_waiter(tier: RedisTier) -> None:
    client = tier.client
    assert isinstance(client, RedisCluster)
    channel_node = node_of(client, channel_name(NS))
    key = value_key()
    while node_of(client, key) == channel_node:  # PUBLISH runs on the key's node
        key = value_key()
    leases = LeaseManager(client, ttl=5.0)
    notifier = Notifier(client, channel=channel_name(NS))
    assert notifier.start()
    try:
        lease = leases.acquire(key)
        assert isinstance(lease, Lease)
        with notifier.waiter(key) as waiter:
            threading.Timer(0.05, leases.write_back, (lease, packed("done"), 60)).start()
            assert waiter.wait(5.0) == "d"
        assert tier.get(key) == "done"
    finally:
        notifier.stop()


# --- single flight across processes ---


def build_cache(url: str) -> tuple[MultiLevelCache, FleetCoordinator]:
    """One process's stack, wired as tiercel.tasks.runtime wires it."""
    tier = RedisTier.from_url(url, serializer=SERIALIZER, namespace=NS)
    leases = LeaseManager(tier.client, ttl=5.0, channel=channel_name(NS))
    notifier = Notifier(
        tier.client,
        channel=channel_name(NS),
        on_invalidate=lambda key: cache.invalidate_local([key]),
        on_done=lambda key: cache.discard_local(key),
    )
    coordinator = FleetCoordinator(tier, leases, LeaseRenewer(leases), notifier, max_wait=20)
    cache = MultiLevelCache(
        serializer=SERIALIZER,
        levels=[MemoryLevel("l1", max_entries=100)],
        tier=tier,
        fleet=coordinator,
    )
    assert notifier.start()
    return cache, coordinator


def run_threads(
    cache: MultiLevelCache, key: str, counter: str, threads: int, start_at: float
) -> list[str]:
    """``value:source`` of each thread's get_or_compute; ``late`` if it missed ``start_at``."""
    results: list[str] = []

    def compute() -> str:
        tier = cache.tier
        assert tier is not None
        tier.client.incr(counter)
        time.sleep(0.3)  # long enough that every caller arrives while it runs
        return "answer"

    def call() -> None:
        if time.time() > start_at:
            results.append("late")
        time.sleep(max(0.0, start_at - time.time()))
        found = cache.get_or_compute(key, compute=compute, ttl=60)
        results.append(f"{found.value}:{found.source}")

    workers = [threading.Thread(target=call) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
    return results


def child(url: str, key: str, counter: str) -> None:
    """Entry point of a child process: once connected it says ``ready`` and reads the
    start time from stdin; then 4 threads want ``key`` at that time."""
    cache, coordinator = build_cache(url)
    try:
        print("ready", flush=True)
        start_at = float(sys.stdin.readline())
        results = run_threads(cache, key, counter, 4, start_at)
        print(",".join(results))
    finally:
        coordinator.close()
        cache.close()


def test_one_computation_across_processes_and_threads(cluster_url: str, tier: RedisTier) -> None:
    key = value_key("single_flight")
    counter = f"{NS}:counter:{{{uuid.uuid4().hex}}}"
    code = (
        "import sys; from tests.integration.test_cluster import child; "
        "child(sys.argv[1], sys.argv[2], sys.argv[3])"
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code, cluster_url, key, counter],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    cache, coordinator = build_cache(cluster_url)
    # The start time is set once both children have imported and connected (their
    # start-up takes seconds on a loaded machine), so "late" means a caller really
    # missed the race, not a slow import.
    for process in children:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    start_at = time.time() + 0.5
    for process in children:
        assert process.stdin is not None
        process.stdin.write(f"{start_at!r}\n")
        process.stdin.flush()
    try:
        here = run_threads(cache, key, counter, 4, start_at)
    finally:
        coordinator.close()
        cache.close()
    outputs = []
    for process in children:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err[-2000:]
        outputs.extend(out.strip().split(","))
    everyone = here + outputs
    assert "late" not in everyone  # all 12 callers really raced
    assert len(everyone) == 12
    assert sorted(everyone).count("answer:computed") == 1, everyone
    assert all(result.startswith("answer:") for result in everyone), everyone
    assert int(tier.client.get(counter) or 0) == 1


# --- `tiercel up`'s reachability check ---


def test_check_reachable_takes_cluster_urls(cluster: ClusterProcesses) -> None:
    check_reachable("cache", cluster.url, timeout=1.0)
    dead = f"redis+cluster://app:cluster-secret@127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ServerError, match="unreachable") as info:
        check_reachable("cache", dead, timeout=1.0)
    assert time.monotonic() - started < 3.0
    assert "cluster-secret" not in str(info.value)
    assert "app:***@" in str(info.value)


def test_housekeeping_walks_every_node_of_the_cluster(cluster_url: str) -> None:
    from tiercel.core.encoding.prefixes import TAG_INDEX
    from tiercel.tasks.maintenance import housekeep

    client = client_from_url(cluster_url, max_connections=4, socket_timeout=2.0)
    try:
        keys = [value_key(f"hk{i}") for i in range(60)]
        stale_leases = [CacheKey.of(key).lease for key in keys]
        for lease in stale_leases:
            client.set(lease, "1:nobody")  # no TTL: nobody could ever release it
        tag_index = f"{NS}:{TAG_INDEX}:{{hk-tag}}"
        client.sadd(tag_index, *keys)  # members whose values are gone
        assert len({node_of(client, lease) for lease in stale_leases}) == 3
        done = housekeep(client, NS, budget=10.0, batch=50)
        assert done["complete"] and done["stale_keys"] == 60 and done["tag_members"] == 60
        assert not any(client.exists(lease) for lease in stale_leases)
        assert client.scard(tag_index) == 0
    finally:
        client.close()


def test_on_a_cluster_a_claim_indexes_its_tags_apart_and_a_tag_invalidation_fences_it(
    cluster_url: str, tier: RedisTier
) -> None:
    from tiercel.core.tier.tag_index import tag_index_key

    cache, coordinator = build_cache(cluster_url)
    try:
        key = value_key()
        assert not coordinator.leases.indexes_tags  # the index lives in its tag's slot
        with pytest.raises(ValueError, match="other slots"):
            coordinator.leases.acquire(key, indexes=[tag_index_key(NS, "t")], index_ttl=60)
        got = coordinator.claim(key, ttl=60, tags=("t",), inflight_id=None, unless_present=True)
        assert isinstance(got, Lease)
        assert tier.client.sismember(tag_index_key(NS, "t"), key)
        cache.invalidate_tag("t")
        outcomes: list[object] = []
        coordinator.write_back(got, packed("old"), 60, inflight_id=None, then=outcomes.append)
        assert outcomes == [False]
    finally:
        coordinator.close()
        cache.close()
