"""No call shape of the multi-level cache returns a wrong value silently.

``get(key, compute)`` is how aiocache and the caching guide tiercel grew from
spell "compute on a miss"; with a positional default it returned the function
object. ``default`` and ``compute`` are keyword-only, so that shape is an error.
"""

from __future__ import annotations

from typing import Any

import pytest

from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
from tiercel.core.local.memory_level import MemoryLevel
from tiercel.core.tier.stub import StubStore, StubTier

SERIALIZER = Serializer(MsgpackCodec())


@pytest.fixture
def cache() -> MultiLevelCache:
    return MultiLevelCache(
        serializer=SERIALIZER,
        levels=[MemoryLevel("l1", max_entries=16)],
        tier=StubTier(StubStore(), SERIALIZER),
    )


def compute() -> str:
    return "computed"


def test_get_refuses_a_positional_second_argument(cache: MultiLevelCache) -> None:
    loose: Any = cache.get
    with pytest.raises(TypeError):
        loose("k", compute)
    assert cache.lookup("k") is None, "nothing was computed or stored"


def test_get_takes_default_by_name(cache: MultiLevelCache) -> None:
    assert cache.get("k") is None
    assert cache.get("k", default="fallback") == "fallback"
    cache.set("k", None, ttl=60)
    assert cache.get("k", default="fallback") is None, "a cached None is a hit"


def test_compute_is_passed_by_name(cache: MultiLevelCache) -> None:
    loose: Any = cache.get_or_compute
    with pytest.raises(TypeError):
        loose("k", compute)
    found = cache.get_or_compute("k", compute=compute, ttl=60)
    assert (found.value, found.source) == ("computed", "computed")
    assert cache.get("k") == "computed"
    refresh: Any = cache.refresh
    with pytest.raises(TypeError):
        refresh("k", compute)
    refreshed = cache.refresh("k", compute=lambda: "newer", ttl=60)
    assert refreshed is not None and refreshed.value == "newer"
    assert cache.get("k") == "newer"
