"""Every level and tier runs the one shared contract (tests/core/cache_contract.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.core.cache_contract import CHECKS, MISS, MultiLevelStore
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
from tiercel.core.local.bytes_level import BytesLevel
from tiercel.core.local.cache_level import CacheLevel
from tiercel.core.local.memory_level import MemoryLevel
from tiercel.core.tier.redis_tier import MISSING, RedisTier

SERIALIZER = Serializer(MsgpackCodec())


class LevelStore:
    def __init__(self, level: CacheLevel[Any], encode: bool) -> None:
        self.level = level
        self.encode = encode

    def put(self, key: str, value: Any, ttl: float = 60.0) -> None:
        self.level.set(key, SERIALIZER.dumps(value) if self.encode else value, ttl=ttl)

    def fetch(self, key: str) -> Any:
        found = self.level.get_with_ttl(key)
        if found is None:
            return MISS
        return SERIALIZER.loads(found[0]) if self.encode else found[0]

    def remove(self, key: str) -> None:
        self.level.discard(key)

    def fetch_many(self, keys: list[str]) -> dict[str, Any]:
        return {key: value for key in keys if (value := self.fetch(key)) is not MISS}


class TierStore:
    def __init__(self, tier: RedisTier) -> None:
        self.tier = tier

    def put(self, key: str, value: Any, ttl: float = 60.0) -> None:
        assert self.tier.set(key, value, ttl=ttl)

    def fetch(self, key: str) -> Any:
        value = self.tier.get(key)
        return MISS if value is MISSING else value

    def remove(self, key: str) -> None:
        self.tier.delete(key)

    def fetch_many(self, keys: list[str]) -> dict[str, Any]:
        return self.tier.get_many(keys)


def _levels() -> list[CacheLevel[Any]]:
    return [
        MemoryLevel("memory", max_entries=100),
        BytesLevel("bytes", max_entries=100, max_bytes=2**20),
    ]


STORES: dict[str, Callable[[str], Any]] = {
    "memory-level": lambda url: LevelStore(MemoryLevel("l1", max_entries=100), encode=False),
    "bytes-level": lambda url: LevelStore(
        BytesLevel("l2", max_entries=100, max_bytes=2**20), encode=True
    ),
    "redis-tier": lambda url: TierStore(
        RedisTier.from_url(url, serializer=SERIALIZER, namespace="contract")
    ),
    "multilevel-local": lambda url: MultiLevelStore(
        MultiLevelCache(serializer=SERIALIZER, levels=_levels())
    ),
    "multilevel-redis": lambda url: MultiLevelStore(
        MultiLevelCache(
            serializer=SERIALIZER,
            levels=_levels(),
            tier=RedisTier.from_url(url, serializer=SERIALIZER, namespace="contract"),
        )
    ),
    "redis-only": lambda url: MultiLevelStore(
        MultiLevelCache(
            serializer=SERIALIZER,
            tier=RedisTier.from_url(url, serializer=SERIALIZER, namespace="contract"),
        )
    ),
}


@pytest.fixture(params=sorted(STORES))
def store(request: pytest.FixtureRequest, cache_url: str) -> Iterator[Any]:
    yield STORES[request.param](cache_url)


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_contract(store: Any, check: Callable[[Any], None]) -> None:
    check(store)
