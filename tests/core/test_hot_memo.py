"""The hot memo: raw-argument keys, and answers that never outlive the level they mirror."""

from __future__ import annotations

from typing import Any

import pytest

from tests.core.level_suite import FakeClock
from tiercel.core.cache.hot_memo import call_key
from tiercel.core.cache.lookup import Lookup
from tiercel.core.cache.memoize import NAMESPACE_SCOPE, CachedFunction, Memoized
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
from tiercel.core.local.bytes_level import BytesLevel
from tiercel.core.local.memory_level import MemoryLevel
from tiercel.core.tier.generations import Generations
from tiercel.core.tier.liveness import ChannelLiveness

# -- keys ----------------------------------------------------------------------------------


def test_one_one_point_zero_and_true_are_three_keys() -> None:
    keys = [call_key((1,), {}), call_key((1.0,), {}), call_key((True,), {})]
    assert len(set(keys)) == 3
    assert call_key((1, 2), {}) != call_key((1.0, 2), {}) != call_key((True, 2), {})
    assert call_key((), {"x": 1}) != call_key((), {"x": 1.0}) != call_key((), {"x": True})
    assert call_key(((1, 2),), {}) != call_key((1, 2), {})  # a tuple is not two arguments
    assert call_key(("1",), {}) != call_key((1,), {})
    assert call_key((b"1",), {}) != call_key(("1",), {})
    assert call_key((None,), {}) != call_key((0,), {})


def test_calls_the_memo_cannot_key_fall_back() -> None:
    class Number(int):
        pass

    for args in [([1],), ({"a": 1},), (0.0,), (-0.0,), ((1.5, 2),), ((True,),), (Number(1),)]:
        assert call_key(args, {}) is None, args
    assert call_key((), {"x": [1]}) is None
    assert call_key((1,), {"x": 1}) == call_key((1,), {"x": 1})  # equal calls, equal keys


# -- a memoized function over a memory level, a liveness gate and generations ---------------


class Setup:
    def __init__(self, *, max_entries: int = 100, levels: list[Any] | None = None) -> None:
        self.clock = FakeClock()
        self.trust = ChannelLiveness(10.0, clock=self.clock)
        self.trust.confirm(self.clock())  # the channel answered just now
        self.cache = MultiLevelCache(
            serializer=Serializer(MsgpackCodec()),
            levels=levels
            or [MemoryLevel("memory", max_entries=max_entries, ttl=300, timer=self.clock)],
            trust=self.trust,
        )
        self.generations = Generations(None, max_age=1000, timer=self.clock)
        self.computed: list[Any] = []

        def report(n: Any) -> str:
            self.computed.append(n)
            return f"report {n!r}"

        self.spec = CachedFunction(report, ttl=60, name="tests.report", tags=("reports",))
        self.fn = Memoized(
            self.spec, self.cache, self.generations, "t", timer=self.clock, refresher=None
        )

    def warm(self, n: Any) -> None:
        """Computed, then answered by the level (and remembered), then by the memo."""
        for _ in range(3):
            assert self.fn(n) == f"report {n!r}"
        assert self.memo_answers(n)

    def memo_answers(self, n: Any) -> bool:
        hits = self.fn.hot_hits
        self.fn(n)
        return self.fn.hot_hits == hits + 1

    def key(self, n: Any) -> str:
        return self.spec.key("t", self.generations, (n,), {})


def test_a_memo_answer_is_a_level_answer_made_before() -> None:
    setup = Setup()
    setup.fn(7)  # computed: not remembered
    hits = setup.fn.hot_hits
    setup.fn(7)  # the level answers: remembered
    assert setup.fn.hot_hits == hits
    assert setup.memo_answers(7)
    assert setup.computed == [7]
    # Counted as hits of the level it mirrors, as before the memo existed.
    assert setup.cache.stats()["levels"]["memory"].hits == 1 + setup.fn.hot_hits


def test_one_one_point_zero_and_true_never_answer_for_each_other() -> None:
    setup = Setup()
    for n in (1, 1.0, True):
        setup.warm(n)
    assert [setup.fn(1), setup.fn(1.0), setup.fn(True)] == ["report 1", "report 1.0", "report True"]
    assert setup.computed == [1, 1.0, True]


def test_invalidating_the_key_makes_the_memo_miss() -> None:
    setup = Setup()
    setup.warm(7)
    setup.fn.invalidate(7)
    assert not setup.memo_answers(7)
    assert setup.computed == [7, 7]


@pytest.mark.parametrize(
    "drop",
    [
        lambda s: s.cache.invalidate_local([s.key(7)]),  # an invalidation message
        lambda s: s.cache.discard_local(s.key(7)),  # a newer value written elsewhere
        lambda s: s.cache.invalidate_tag("reports"),  # by tag
        lambda s: s.fn.invalidate_all(),  # by version (the function's generation)
        lambda s: s.generations.bump(NAMESPACE_SCOPE),  # the whole namespace
        lambda s: s.generations.observe(NAMESPACE_SCOPE, 5),  # announced by another process
        lambda s: s.cache.clear_local(),  # the channel was lost
    ],
    ids=["key message", "newer value", "tag", "version", "namespace", "announced", "clear"],
)
def test_every_drop_of_the_level_copy_reaches_the_memo(drop: Any) -> None:
    setup = Setup()
    setup.warm(7)
    drop(setup)
    assert not setup.memo_answers(7)


@pytest.mark.parametrize("policy", ["lru", "cost"])
def test_an_evicted_entry_leaves_the_memo(policy: str) -> None:
    clock = FakeClock()
    level = MemoryLevel("memory", max_entries=4, ttl=300, timer=clock, policy=policy)
    setup = Setup(levels=[level])
    setup.warm(1)
    others = iter(range(2, 10_000))
    while setup.key(1) in level:  # newcomers, called often enough to be admitted
        n = next(others)
        for _ in range(3):
            setup.fn(n)
    assert not setup.memo_answers(1)
    assert setup.computed.count(1) == 2


def test_the_level_sees_the_calls_the_memo_answers() -> None:
    setup = Setup()
    setup.warm(7)
    level = setup.cache.levels[0]
    read_before = level.stats.hits
    for _ in range(64):
        setup.fn(7)
    # One memo answer in 16 also reads the level (its recency and frequency follow the
    # calls); the level's hits as reported count every memo answer exactly once.
    assert level.stats.hits - read_before == 4
    assert setup.cache.stats()["levels"]["memory"].hits == level.stats.hits + (
        setup.fn.memo.hits - setup.fn.memo.touches
    )


def test_an_entry_the_level_lost_unannounced_leaves_the_memo() -> None:
    setup = Setup()
    setup.warm(7)
    setup.cache.levels[0].pop(setup.key(7))  # gone without a word (as a budget eviction)
    answered = 0
    while setup.memo_answers(7):
        answered += 1
    # Within one answer in 16 the memo finds out, and the call reads the cache (which
    # computes again: this cache has no shared tier).
    assert answered < 16 and setup.computed == [7, 7]


def test_an_expired_entry_never_answers() -> None:
    setup = Setup()
    setup.warm(7)
    setup.clock.advance(61)  # past the value's ttl
    setup.trust.confirm(setup.clock())
    assert not setup.memo_answers(7)
    assert setup.computed == [7, 7]


def test_no_answer_once_the_liveness_deadline_passes() -> None:
    setup = Setup()
    setup.warm(7)
    setup.clock.advance(10.5)  # no probe answered for longer than the bound
    assert not setup.memo_answers(7)
    assert setup.computed == [7, 7]  # nor the level: computed again
    setup.trust.confirm(setup.clock())
    setup.warm(8)  # answers again once the channel is live


def test_no_answer_past_the_generations_freshness() -> None:
    setup = Setup()
    setup.generations = Generations(None, max_age=1.0, timer=setup.clock)
    setup.fn = Memoized(setup.spec, setup.cache, setup.generations, "t", timer=setup.clock)
    setup.warm(7)
    setup.clock.advance(1.5)
    assert not setup.memo_answers(7)


def test_a_drop_racing_a_lookup_keeps_the_answer_out() -> None:
    setup = Setup()
    setup.fn(7)
    memo = setup.fn.memo
    mark = memo.mark()
    found = setup.cache.lookup(setup.key(7))
    assert found is not None and found.source == "memory"
    setup.cache.discard_local(setup.key(7))  # arrives while the answer is on its way
    assert not memo.install(call_key((7,), {}), setup.key(7), found, mark, 30.0)
    assert memo.install(call_key((7,), {}), setup.key(7), found, memo.mark(), 30.0)


def test_only_answers_of_a_memory_level_are_remembered() -> None:
    setup = Setup(levels=[BytesLevel("bytes", max_entries=10, max_bytes=2**20)])
    for _ in range(4):
        setup.fn(7)
    assert setup.fn.hot_hits == 0 and setup.computed == [7]
    memo = Setup().fn.memo
    redis_answer = Lookup("v", "redis", 30.0)
    assert not memo.install(call_key((1,), {}), "k", redis_answer, memo.mark(), 30.0)


def test_the_memo_is_bounded() -> None:
    setup = Setup()
    setup.fn = Memoized(setup.spec, setup.cache, setup.generations, "t", hot_entries=8)
    for n in range(40):
        setup.fn(n)
        setup.fn(n)
    assert len(setup.fn.memo.entries) <= 8


def test_answers_are_timed_one_in_every() -> None:
    setup = Setup()
    samples: list[float] = []
    setup.fn.memo.time_answers(samples.append, 4)
    setup.warm(7)
    for _ in range(20):
        setup.fn(7)
    assert len(samples) == setup.fn.hot_hits // 4
    with pytest.raises(ValueError, match="power of two"):
        setup.fn.memo.time_answers(samples.append, 6)


@pytest.mark.parametrize(
    "args",
    [(7,), ("a",), (7, 11), (7.5,), ((7, 11),), (True,), (None,), (b"x",), (1, 2.5), (1, True)],
    ids=repr,
)
def test_each_keyed_shape_is_answered_once_warm_and_only_by_itself(args: tuple[Any, ...]) -> None:
    # The memo's answer keys its commonest shapes inline; they must be call_key's keys.
    setup = Setup()

    def echo(*values: Any) -> str:
        return repr(values)

    spec = CachedFunction(echo, ttl=60, name="tests.echo")
    fn = Memoized(spec, setup.cache, setup.generations, "t", timer=setup.clock)
    for _ in range(3):
        assert fn(*args) == repr(args)
    hits = fn.hot_hits
    assert fn(*args) == repr(args) and fn.hot_hits == hits + 1
    assert fn.memo.answer(args, {}) == repr(args)
    twin = tuple(float(a) if type(a) is int else a for a in args)  # 7 -> 7.0, as a caller might
    if twin != args or any(type(a) is not type(b) for a, b in zip(twin, args, strict=True)):
        assert fn(*twin) == repr(twin)
