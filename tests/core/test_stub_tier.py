"""The in-memory stub tier honours the contract real Redis does (tests/core/cache_contract.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.core.cache_contract import CHECKS, MultiLevelStore
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.cache.stub_fleet import StubFleet
from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
from tiercel.core.local.bytes_level import BytesLevel
from tiercel.core.local.memory_level import MemoryLevel
from tiercel.core.tier.stub import StubStore, StubTier

SERIALIZER = Serializer(MsgpackCodec())


def stub_only() -> MultiLevelStore:
    return MultiLevelStore(
        MultiLevelCache(serializer=SERIALIZER, tier=StubTier(StubStore(), SERIALIZER))
    )


def stub_with_levels_and_fleet() -> MultiLevelStore:
    store = StubStore()
    cache = MultiLevelCache(
        serializer=SERIALIZER,
        levels=[
            MemoryLevel("memory", max_entries=100),
            BytesLevel("bytes", max_entries=100, max_bytes=2**20),
        ],
        tier=StubTier(store, SERIALIZER),
        fleet=StubFleet(store),
    )
    return MultiLevelStore(cache)


STORES: dict[str, Callable[[], Any]] = {
    "stub-only": stub_only,
    "stub-levels-fleet": stub_with_levels_and_fleet,
}


@pytest.mark.parametrize("make", STORES.values(), ids=list(STORES))
@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_contract(make: Callable[[], Any], check: Callable[[Any], None]) -> None:
    check(make())


def test_an_expired_value_is_gone_and_a_down_store_misses_without_raising() -> None:
    now = [1000.0]
    store = StubStore(clock=lambda: now[0])
    tier = StubTier(store, SERIALIZER)
    assert tier.set("k", "v", ttl=10)
    assert tier.get_entry("k") is not None
    now[0] += 11
    assert tier.get_entry("k") is None
    assert tier.set("k", "v", ttl=10)
    store.down = True
    assert tier.get_entry("k") is None
    assert not tier.set("j", "v", ttl=10)
    assert tier.stats["errors"] == 2


def test_generations_only_grow() -> None:
    tier = StubTier(StubStore(), SERIALIZER)
    assert tier.generation("fn") == 0
    assert tier.bump_generation("fn") == 1
    assert tier.restore_generation("fn", 5) == 5
    assert tier.restore_generation("fn", 2) == 5
