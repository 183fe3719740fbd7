"""The staleness gate: ChannelLiveness's deadline, and the cache that consults it.

The clock is injected, so no test sleeps. The listener side (probes on a
real subscription, a silent proxy) is in tests/integration/test_notifier.py
and tests/reliability/test_faults.py.
"""

from __future__ import annotations

import pytest

from tiercel.core.cache.lookup import SOURCE_COMPUTED, SOURCE_REDIS
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.cache.stub_fleet import StubFleet
from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
from tiercel.core.errors import SettingsError
from tiercel.core.local.bytes_level import BytesLevel
from tiercel.core.local.memory_level import MemoryLevel
from tiercel.core.settings import Settings
from tiercel.core.tier.liveness import ChannelLiveness
from tiercel.core.tier.stub import StubStore, StubTier

SERIALIZER = Serializer(MsgpackCodec())


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nothing_is_trusted_before_the_first_answer() -> None:
    liveness = ChannelLiveness(1.0, clock=Clock())
    assert not liveness.live()
    assert not liveness.trusted()
    assert liveness.lapsed()
    assert liveness.remaining() == float("-inf")


def test_an_answer_is_trusted_for_the_bound_from_when_its_probe_was_sent() -> None:
    clock = Clock()
    liveness = ChannelLiveness(1.0, clock=clock)
    sent = clock.now
    clock.now += 0.3  # the round trip: the deadline counts from the send, not the answer
    liveness.confirm(sent)
    assert liveness.live() and liveness.trusted()
    assert liveness.remaining() == pytest.approx(0.7)
    clock.now = sent + 0.999
    assert liveness.trusted()
    clock.now = sent + 1.0
    assert not liveness.trusted()
    assert liveness.lapsed()


def test_a_late_answer_to_an_older_probe_never_moves_the_deadline_back() -> None:
    clock = Clock()
    liveness = ChannelLiveness(1.0, clock=clock)
    liveness.confirm(100.5)
    liveness.confirm(100.2)
    assert liveness.live_until == pytest.approx(101.5)


def test_the_grace_extends_trust_but_not_liveness() -> None:
    clock = Clock()
    liveness = ChannelLiveness(1.0, grace=30.0, clock=clock)
    liveness.confirm(clock.now)
    clock.now += 5
    assert not liveness.live()
    assert liveness.trusted()
    assert liveness.remaining() == pytest.approx(26.0)
    clock.now += 26
    assert not liveness.trusted()


def test_probes_go_every_third_of_the_bound_and_bad_bounds_are_refused() -> None:
    assert ChannelLiveness(1.5).probe_interval == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ChannelLiveness(0)
    with pytest.raises(ValueError):
        ChannelLiveness(1.0, grace=-1)


def test_settings_default_to_a_strict_one_second_bound_and_validate() -> None:
    settings = Settings.from_env({})
    assert settings.staleness_bound == 1.0
    assert settings.outage_grace == 0.0
    tuned = Settings.from_env({"TIERCEL_STALENESS_BOUND": "2.5", "TIERCEL_OUTAGE_GRACE": "60"})
    assert (tuned.staleness_bound, tuned.outage_grace) == (2.5, 60.0)
    with pytest.raises(SettingsError, match="TIERCEL_STALENESS_BOUND"):
        Settings.from_env({"TIERCEL_STALENESS_BOUND": "0.01"})
    with pytest.raises(SettingsError, match="TIERCEL_OUTAGE_GRACE"):
        Settings.from_env({"TIERCEL_OUTAGE_GRACE": "-1"})


def gated_cache(store: StubStore, liveness: ChannelLiveness) -> MultiLevelCache:
    return MultiLevelCache(
        serializer=SERIALIZER,
        levels=[
            MemoryLevel("memory", max_entries=100),
            BytesLevel("bytes", max_entries=100, max_bytes=2**20),
        ],
        tier=StubTier(store, SERIALIZER),
        fleet=StubFleet(store),
        trust=liveness,
    )


def test_untrusted_levels_are_skipped_for_the_tier_and_used_again_once_live() -> None:
    clock = Clock()
    liveness = ChannelLiveness(1.0, clock=clock)
    liveness.confirm(clock.now)
    store = StubStore()
    cache = gated_cache(store, liveness)
    cache.set("k", "old", ttl=600)
    assert cache.lookup("k").source == "memory"  # type: ignore[union-attr]
    # Another process replaces the value; this one's channel is silent, so it never hears.
    StubTier(store, SERIALIZER).set("k", "new", ttl=600)
    assert cache.lookup("k").value == "old"  # type: ignore[union-attr]  (within the bound)
    clock.now += 1.0
    found = cache.lookup("k")
    assert found is not None
    assert (found.value, found.source) == ("new", SOURCE_REDIS)
    assert cache.lookup("k", remote=False) is None
    assert cache.local_trust_remaining() <= 0
    liveness.confirm(clock.now)
    assert cache.lookup("k", remote=False) is not None
    assert cache.local_trust_remaining() == pytest.approx(1.0)


def test_untrusted_levels_with_the_tier_down_compute_and_never_fail() -> None:
    clock = Clock()
    liveness = ChannelLiveness(1.0, clock=clock)
    liveness.confirm(clock.now)
    store = StubStore()
    cache = gated_cache(store, liveness)
    cache.set("k", "old", ttl=600)
    store.down = True
    clock.now += 1.5
    found = cache.get_or_compute("k", compute=lambda: "fresh", ttl=600)
    assert (found.value, found.source) == ("fresh", SOURCE_COMPUTED)
    assert cache.lookup_many(["k"]) == {}


def test_a_cache_without_trust_always_answers_locally() -> None:
    cache = MultiLevelCache(serializer=SERIALIZER, levels=[MemoryLevel("memory", max_entries=4)])
    cache.set("k", 1)
    assert cache.lookup("k").source == "memory"  # type: ignore[union-attr]
    assert cache.local_trust_remaining() == float("inf")
