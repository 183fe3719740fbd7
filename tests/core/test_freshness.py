"""Early refresh (XFetch), stale-while-revalidate and stale-if-error."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest

from tests.core.level_suite import FakeClock
from tiercel.core.cache.freshness import EARLY, FRESH, STALE, BackgroundRefresher, FreshnessPolicy
from tiercel.core.cache.memoize import CachedFunction, Memoized
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
from tiercel.core.local.memory_level import MemoryLevel
from tiercel.core.tier.generations import Generations


def test_judge_fresh_stale_and_no_expiry() -> None:
    policy = FreshnessPolicy(stale_ttl=10, early_refresh=0)
    assert policy.judge(None, 1.0) == FRESH
    assert policy.judge(15, 1.0) == FRESH
    assert policy.judge(10, 1.0) == STALE
    assert policy.judge(3, 1.0) == STALE
    assert policy.physical_ttl(60) == 70


def test_xfetch_decision_follows_the_formula() -> None:
    policy = FreshnessPolicy(early_refresh=1.0)
    # delta * beta * -ln(U) >= time_left, with U = 1 - rand()
    assert policy.judge(1.0, 2.0, rand=lambda: 0.5) == EARLY  # 2 * ln 2 = 1.39 >= 1
    assert policy.judge(2.0, 2.0, rand=lambda: 0.5) == FRESH  # 1.39 < 2
    assert policy.judge(5.0, 0.0, rand=lambda: 0.999) == FRESH  # nothing known of delta
    assert FreshnessPolicy(early_refresh=0).judge(0.001, 100.0, rand=lambda: 0.99) == FRESH


def test_xfetch_probability_matches_theory() -> None:
    import random

    rng = random.Random(3)
    policy = FreshnessPolicy(early_refresh=1.0)
    delta, left = 1.0, 2.0
    trials = 20_000
    early = sum(policy.judge(left, delta, rand=rng.random) == EARLY for _ in range(trials))
    expected = math.exp(-left / delta)  # P(-ln U >= left/delta)
    assert abs(early / trials - expected) < 0.01


def test_policy_validation() -> None:
    with pytest.raises(ValueError, match="stale_ttl"):
        FreshnessPolicy(stale_ttl=-1)
    with pytest.raises(ValueError, match="early_refresh"):
        FreshnessPolicy(early_refresh=-0.5)


def test_refresher_runs_one_refresh_per_key_and_is_bounded() -> None:
    refresher = BackgroundRefresher(workers=1, max_pending=2)
    gate = threading.Event()
    ran: list[str] = []

    def slow(name: str) -> Any:
        def run() -> None:
            gate.wait(5)
            ran.append(name)

        return run

    assert refresher.submit("a", slow("a"))
    assert not refresher.submit("a", slow("a-again"))  # already pending
    assert refresher.submit("b", slow("b"))
    assert not refresher.submit("c", slow("c"))  # backlog full
    gate.set()
    deadline = time.monotonic() + 5
    while len(ran) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    refresher.close()
    assert sorted(ran) == ["a", "b"]
    assert refresher.dropped == 2
    assert refresher.submit("a", slow("a"))  # free again once its refresh finished
    refresher.close()


def _memo(
    clock: FakeClock,
    fn: Any,
    policy: FreshnessPolicy,
    ttl: float,
    refresher: BackgroundRefresher | None,
) -> Memoized[Any, Any]:
    cache = MultiLevelCache(
        serializer=Serializer(MsgpackCodec()),
        levels=[MemoryLevel("memory", max_entries=10, timer=clock)],
    )
    return Memoized(
        CachedFunction(fn, ttl=ttl, policy=policy),
        cache,
        Generations(None, max_age=1000, timer=clock),
        "t",
        timer=clock,
        refresher=refresher,
    )


def test_stale_while_revalidate_serves_stale_at_once_and_refreshes_in_background() -> None:
    clock = FakeClock()
    revisions = iter(range(1, 100))
    done = threading.Event()

    def fetch() -> int:
        value = next(revisions)
        if value > 1:
            done.set()
        return value

    refresher = BackgroundRefresher()
    memo = _memo(clock, fetch, FreshnessPolicy(stale_ttl=60, early_refresh=0), 10, refresher)
    assert memo() == 1
    clock.advance(15)  # past ttl, inside the stale window
    assert memo() == 1  # the stale value, at once
    assert done.wait(5)
    refresher.close()
    assert memo() == 2


def _works_once(calls: list[int]) -> Any:
    """A source that answers 42 once, then fails (each call recorded in ``calls``)."""

    def flaky() -> int:
        calls.append(1)
        if len(calls) > 1:
            raise ConnectionError("source down")
        return 42

    return flaky


def test_stale_if_error_serves_the_stale_value_when_the_refresh_fails() -> None:
    clock = FakeClock()
    calls: list[int] = []
    flaky = _works_once(calls)
    memo = _memo(
        clock,
        flaky,
        FreshnessPolicy(
            stale_ttl=60, stale_while_revalidate=False, stale_if_error=True, early_refresh=0
        ),
        10,
        None,
    )
    assert memo() == 42
    clock.advance(15)
    assert memo() == 42 and len(calls) == 2  # refreshed synchronously, failed, served stale
    clock.advance(60)  # past the stale window: nothing left to serve
    with pytest.raises(ConnectionError):
        memo()


def test_without_stale_if_error_a_failed_refresh_raises() -> None:
    clock = FakeClock()
    calls: list[int] = []
    flaky = _works_once(calls)
    memo = _memo(
        clock,
        flaky,
        FreshnessPolicy(stale_ttl=60, stale_while_revalidate=False, early_refresh=0),
        10,
        None,
    )
    assert memo() == 42
    clock.advance(15)
    with pytest.raises(ConnectionError):
        memo()


def test_memo_never_serves_a_stale_value_without_asking_the_policy() -> None:
    clock = FakeClock()
    memo = _memo(
        clock,
        lambda: time.time(),
        FreshnessPolicy(stale_ttl=60, early_refresh=0),
        10,
        BackgroundRefresher(),
    )
    memo()
    clock.advance(11)
    hits = memo.hot_hits
    memo()
    assert memo.hot_hits == hits  # the stale answer went through the policy


def test_serves_is_the_one_submit_decision() -> None:
    from tiercel.core.cache.failures import record
    from tiercel.core.cache.lookup import Lookup

    swr = CachedFunction(lambda: 1, ttl=10, policy=FreshnessPolicy(stale_ttl=60, early_refresh=0))
    strict = CachedFunction(
        lambda: 1,
        ttl=10,
        policy=FreshnessPolicy(stale_ttl=60, stale_while_revalidate=False, early_refresh=0),
    )
    fresh, stale = Lookup("v", "memory", 65.0), Lookup("v", "redis", 30.0)
    assert swr.serves(None) == (False, False)
    assert swr.serves(fresh) == (True, False)
    assert swr.serves(stale) == (True, True), "served while one refresh runs"
    assert strict.serves(stale) == (False, False), "the reader waits for the refresh"
    failing = CachedFunction(lambda: 1, ttl=10, cache_errors=(KeyError,), error_ttl=30)
    live = record(KeyError("gone"), 30)
    old = record(KeyError("gone"), 30, wall_clock=lambda: time.time() - 31)
    assert failing.serves(Lookup(live, "redis", 20.0)) == (True, False)
    assert failing.serves(Lookup(old, "redis", 20.0)) == (False, False)
    assert failing.expired_failure(old) and not failing.expired_failure(live)
    assert not swr.expired_failure(old), "only a function that caches errors has failures"


def test_a_refresh_asked_for_computes_only_what_is_not_fresh_any_more() -> None:
    # A refresh task (force_refresh) is enqueued when a reader saw an early or stale
    # value; by the time it runs another refresh may have written a fresh one.
    clock = FakeClock()
    revisions = iter(range(1, 100))
    cache = MultiLevelCache(
        serializer=Serializer(MsgpackCodec()),
        levels=[MemoryLevel("memory", max_entries=10, timer=clock)],
    )
    spec = CachedFunction(
        lambda: next(revisions), ttl=10, policy=FreshnessPolicy(stale_ttl=60, early_refresh=0)
    )
    generations = Generations(None, max_age=1000, timer=clock)

    def refresh() -> Any:
        return spec.call(cache, generations, "t", (), {}, force_refresh=True).value

    assert spec.call(cache, generations, "t", (), {}).value == 1
    assert refresh() == 1, "still fresh: nothing to refresh, nothing computed"
    clock.advance(15)  # stale now
    assert refresh() == 2, "stale: refreshed"
    assert refresh() == 2, "the second refresh finds the first one's value fresh"
    assert next(revisions) == 3, "two computations in all"
