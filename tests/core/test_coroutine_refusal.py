"""Sync-only decorators refuse coroutine functions at decoration, naming what to use."""

from __future__ import annotations

import pytest

from tiercel.core.cache.memoize import cached
from tiercel.core.cache.multilevel import MultiLevelCache
from tiercel.core.encoding.codecs import MsgpackCodec, Serializer
from tiercel.tasks.cached import cached_task
from tiercel.tasks.registry import _TASKS


async def fetch(n: int) -> int:
    return n


def test_core_cached_refuses_a_coroutine_function_and_names_tiercel_cached() -> None:
    cache = MultiLevelCache(serializer=Serializer(MsgpackCodec()))
    with pytest.raises(TypeError, match=r"coroutine function .*fetch.*tiercel\.cached"):
        cached(cache, ttl=1)(fetch)


def test_core_cached_still_decorates_a_plain_function() -> None:
    cache = MultiLevelCache(serializer=Serializer(MsgpackCodec()))
    cache.add_level("memory", ttl=None, max_size=8)

    @cached(cache, ttl=60)
    def double(n: int) -> int:
        return 2 * n

    assert double(4) == 8
    assert double.lookup(4).source == "memory"


def test_cached_task_refuses_a_coroutine_function_before_registering_it() -> None:
    with pytest.raises(TypeError, match="Celery workers do not run coroutines"):
        cached_task(ttl=1, name="tests.refused.fetch")(fetch)
    with pytest.raises(TypeError, match=r"tiercel\.cached"):
        cached_task(fetch)
    assert "tests.refused.fetch" not in _TASKS
