"""The cache's miss loop over the in-memory stub fleet: the lease rules without Redis.

Each ``Process`` is one simulated process: its own levels, tier client and
fleet client over one shared :class:`StubStore`. The same rules run against
real Redis and real worker processes in tests/integration/test_cluster.py,
test_lease_takeover.py and test_fleet_compute.py.
"""

from __future__ import annotations

import ast
import logging
import pathlib
import threading
import time
from typing import Any

import pytest

from tiercel.core.cache.lookup import SOURCE_COMPUTED, SOURCE_JOINED, SOURCE_REDIS
from tiercel.core.cache.miss_loop import defer, is_deferred
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.cache.stub_fleet import StubFleet
from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
from tiercel.core.errors import ComputationFailed
from tiercel.core.local.memory_level import MemoryLevel
from tiercel.core.tier.leases import Held, Lease
from tiercel.core.tier.stub import StubStore, StubTier

SERIALIZER = Serializer(MsgpackCodec())
ROOT = pathlib.Path(__file__).resolve().parents[2]


class Process:
    """One simulated process of a deployment."""

    def __init__(self, store: StubStore, *, lease_ttl: float = 5.0, max_wait: float = 5.0) -> None:
        self.tier = StubTier(store, SERIALIZER)
        self.fleet = StubFleet(
            store,
            lease_ttl=lease_ttl,
            max_wait=max_wait,
            on_invalidate=lambda key: self.cache.invalidate_local([key]),
            on_tag=lambda tag: self.cache.invalidate_tag_local(tag),
            on_done=lambda key: self.cache.discard_local(key),
        )
        self.cache = MultiLevelCache(
            serializer=SERIALIZER,
            levels=[MemoryLevel("l1", max_entries=100)],
            tier=self.tier,
            fleet=self.fleet,
        )

    def fleet_counts(self) -> dict[str, int]:
        counts: dict[str, int] = self.cache.stats()["fleet"]
        return counts


@pytest.fixture
def store() -> StubStore:
    return StubStore()


def compute_in_threads(processes: list[Process], key: str, compute: Any) -> list[str]:
    """Every process misses ``key`` at once; returns the sources they answered from."""
    barrier = threading.Barrier(len(processes))
    sources: list[str] = []

    def run(process: Process) -> None:
        barrier.wait()
        sources.append(process.cache.get_or_compute(key, compute=compute, ttl=60).source)

    threads = [threading.Thread(target=run, args=(process,)) for process in processes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return sources


def test_concurrent_misses_in_many_processes_compute_once(store: StubStore) -> None:
    processes = [Process(store) for _ in range(4)]
    calls: list[int] = []

    def slow() -> str:
        calls.append(1)
        time.sleep(0.05)
        return "value"

    sources = compute_in_threads(processes, "k", slow)
    assert len(calls) == 1
    assert sorted(sources) == [SOURCE_COMPUTED] + [SOURCE_JOINED] * 3
    assert sum(p.fleet_counts()["computed"] for p in processes) == 1
    assert sum(p.fleet_counts()["joined"] for p in processes) == 3
    assert sum(p.cache.computed for p in processes) == 1
    # every process now answers from its own level, the holder included
    assert {p.cache.lookup("k").source for p in processes} == {"l1"}  # type: ignore[union-attr]


def test_a_waiter_takes_over_the_lease_of_a_holder_that_went_away(store: StubStore) -> None:
    gone, waiter = Process(store, lease_ttl=0.1), Process(store, lease_ttl=0.1)
    lease = gone.fleet.claim("k", ttl=60, tags=(), inflight_id=None, unless_present=True)
    assert isinstance(lease, Lease)  # taken, then never renewed nor released: the holder died
    found = waiter.cache.get_or_compute("k", compute=lambda: "mine", ttl=60)
    assert (found.value, found.source) == ("mine", SOURCE_COMPUTED)
    assert waiter.fleet_counts()["takeovers"] == 1
    # the dead holder's late write is fenced out: the newer token won
    outcomes: list[object] = []
    gone.fleet.write_back(lease, b"late", 60, inflight_id=None, then=outcomes.append)
    assert outcomes == [False]
    assert gone.cache.lookup("k").value == "mine"  # type: ignore[union-attr]


def test_a_value_computed_while_its_key_was_invalidated_is_kept_nowhere(
    store: StubStore,
) -> None:
    holder, other = Process(store), Process(store)

    def invalidated_meanwhile() -> str:
        other.cache.invalidate("k")
        return "outdated"

    found = holder.cache.get_or_compute("k", compute=invalidated_meanwhile, ttl=60)
    assert found.value == "outdated"  # it still answers the request that computed it
    assert holder.fleet_counts()["fenced"] == 1
    assert holder.cache.lookup("k") is None
    assert other.cache.lookup("k") is None


class AnswersLater(StubFleet):
    """The stub fleet whose write-back answers wait until :meth:`answer` (as the Redis
    one's do inside a worker's reply window): the store itself happens at once."""

    def __init__(self, store: StubStore) -> None:
        super().__init__(store)
        self.owed: list[Any] = []

    def write_back(self, lease: Lease, entry: bytes, ttl: float, **kw: Any) -> None:
        then = kw.pop("then")
        super().write_back(
            lease, entry, ttl, then=lambda outcome: self.owed.append(lambda: then(outcome)), **kw
        )

    def answer(self) -> None:
        while self.owed:
            self.owed.pop(0)()


def _answering_later(store: StubStore) -> tuple[MultiLevelCache, AnswersLater]:
    fleet = AnswersLater(store)
    cache = MultiLevelCache(
        serializer=SERIALIZER,
        levels=[MemoryLevel("l1", max_entries=100)],
        tier=StubTier(store, SERIALIZER),
        fleet=fleet,
    )
    return cache, fleet


def test_a_holder_keeps_its_value_only_once_the_write_back_is_answered(
    store: StubStore,
) -> None:
    cache, fleet = _answering_later(store)
    found = cache.get_or_compute("k", compute=lambda: "v", ttl=60)
    assert found.source == SOURCE_COMPUTED
    assert cache.lookup("k", remote=False) is None  # stored in the tier, answer owed
    assert Process(store).cache.lookup("k").value == "v"  # type: ignore[union-attr]
    fleet.answer()
    assert cache.lookup("k", remote=False).value == "v"  # type: ignore[union-attr]


def test_an_invalidation_heard_before_the_answer_keeps_the_value_out_of_the_levels(
    store: StubStore,
) -> None:
    cache, fleet = _answering_later(store)
    cache.get_or_compute("k", compute=lambda: "v", ttl=60)
    cache.invalidate_local(["k"])  # heard from the channel while the answer was owed
    fleet.answer()
    assert cache.lookup("k", remote=False) is None


def test_a_fenced_answer_heard_late_keeps_nothing(store: StubStore) -> None:
    cache, fleet = _answering_later(store)

    def invalidated_meanwhile() -> str:
        Process(store).cache.invalidate("k")
        return "outdated"

    cache.get_or_compute("k", compute=invalidated_meanwhile, ttl=60)
    fleet.answer()
    assert cache.lookup("k") is None
    assert cache.stats()["fleet"]["fenced"] == 1


def test_a_failure_reaches_the_waiters_of_other_processes_and_is_not_cached(
    store: StubStore,
) -> None:
    holder, waiter = Process(store), Process(store)
    started, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def failing() -> str:
        started.set()
        release.wait(5)
        raise ValueError("model refused")

    def hold() -> None:
        try:
            holder.cache.get_or_compute("k", compute=failing, ttl=60)
        except ValueError as exc:
            errors.append(exc)

    thread = threading.Thread(target=hold)
    thread.start()
    assert started.wait(5)
    threading.Timer(0.05, release.set).start()
    with pytest.raises(ComputationFailed) as raised:
        waiter.cache.get_or_compute("k", compute=lambda: "never", ttl=60)
    thread.join(5)
    assert isinstance(errors[0], ValueError)
    assert (raised.value.key, raised.value.error_type) == ("k", "ValueError")
    assert waiter.fleet_counts()["failures_shared"] == 1
    assert holder.cache.compute_errors == 1
    assert holder.cache.lookup("k") is None
    # the next caller computes afresh
    assert waiter.cache.get_or_compute("k", compute=lambda: "ok", ttl=60).value == "ok"


class AskedToRunLater(Exception):
    """Stands in for Celery's Retry, which tiercel.tasks marks with defer()."""


def test_a_deferred_exception_gives_the_lease_up_and_a_waiter_computes(
    store: StubStore,
) -> None:
    holder, waiter = Process(store), Process(store)
    started, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def deferring() -> str:
        started.set()
        release.wait(5)
        raise defer(AskedToRunLater("again in 1s"))

    def hold() -> None:
        try:
            holder.cache.get_or_compute("k", compute=deferring, ttl=60)
        except AskedToRunLater as exc:
            errors.append(exc)

    thread = threading.Thread(target=hold)
    thread.start()
    assert started.wait(5)
    threading.Timer(0.05, release.set).start()
    # not a shared failure: the waiter looks again, takes the lease over and computes
    found = waiter.cache.get_or_compute("k", compute=lambda: "waiter's", ttl=60)
    thread.join(5)
    assert (found.value, found.source) == ("waiter's", SOURCE_COMPUTED)
    assert len(errors) == 1 and is_deferred(errors[0])  # the holder's caller still sees it
    assert waiter.fleet_counts()["failures_shared"] == 0
    assert store.leases == {}
    assert not is_deferred(ValueError("plain"))


def test_with_the_tier_down_a_miss_computes_locally_and_says_so(
    store: StubStore, caplog: pytest.LogCaptureFixture
) -> None:
    process = Process(store)
    store.down = True
    with caplog.at_level(logging.WARNING, logger="tiercel.coordinator"):
        first = process.cache.get_or_compute("k", compute=lambda: "local", ttl=60)
        process.cache.get_or_compute("j", compute=lambda: "local", ttl=60)
    assert (first.value, first.source) == ("local", SOURCE_COMPUTED)
    assert process.fleet_counts()["degraded"] == 2
    assert len(caplog.records) == 1  # one line per interval, not one per request
    assert process.cache.lookup("k", remote=False).value == "local"  # type: ignore[union-attr]
    store.down = False
    assert Process(store).cache.lookup("k") is None  # nothing was shared


def test_a_value_that_cannot_be_encoded_is_not_shared_and_waiters_compute_their_own(
    store: StubStore,
) -> None:
    holder, other = Process(store), Process(store)
    unencodable = object()
    found = holder.cache.get_or_compute("k", compute=lambda: unencodable, ttl=60)
    assert found.value is unencodable
    assert holder.cache.uncacheable == 1
    assert store.leases == {}  # released, not left to expire
    assert other.cache.get_or_compute("k", compute=lambda: "own", ttl=60).value == "own"


def test_refresh_recomputes_under_the_lease_and_yields_to_a_holder(store: StubStore) -> None:
    process, rival = Process(store), Process(store)
    process.cache.get_or_compute("k", compute=lambda: 1, ttl=60)
    refreshed = process.cache.refresh("k", compute=lambda: 2, ttl=60)
    assert refreshed is not None and refreshed.value == 2
    assert process.fleet_counts()["refreshed"] == 1
    held = rival.fleet.claim("k", ttl=60, tags=(), inflight_id=None, unless_present=False)
    assert isinstance(held, Lease)
    assert isinstance(
        process.fleet.claim("k", ttl=60, tags=(), inflight_id=None, unless_present=False), Held
    )
    assert process.cache.refresh("k", compute=lambda: 3, ttl=60) is None
    assert rival.cache.lookup("k").value == 2  # type: ignore[union-attr]


def test_invalidation_by_key_and_by_tag_reaches_other_processes_levels(
    store: StubStore,
) -> None:
    writer, reader = Process(store), Process(store)
    writer.cache.get_or_compute("k", compute=lambda: "v", ttl=60, tags=("reports",))
    assert reader.cache.lookup("k").source == SOURCE_REDIS  # type: ignore[union-attr]
    assert reader.cache.lookup("k").source == "l1"  # type: ignore[union-attr]
    writer.cache.invalidate("k")
    assert reader.cache.lookup("k") is None
    writer.cache.get_or_compute("t", compute=lambda: "v", ttl=60, tags=("reports",))
    reader.cache.lookup("t")
    assert writer.cache.invalidate_tag("reports") == 1
    assert reader.cache.lookup("t", remote=False) is None
    assert reader.cache.lookup("t") is None


def test_the_fleet_layer_never_sees_the_cache() -> None:
    for module in ("coordinator.py", "miss_loop.py", "fleet.py", "stub_fleet.py"):
        tree = ast.parse((ROOT / "core" / "cache" / module).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} | {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        assert "tiercel.core.cache.multilevel" not in imported, module
        assert "MultiLevelCache" not in (ROOT / "core" / "cache" / module).read_text(), module
