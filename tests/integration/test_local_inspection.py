"""Asking every process what its local levels hold, over the channel, on a real Redis;
and a writer keeping the value it just wrote back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from tiercel.core.cache.local_inspection import (
    MAX_ANSWERS_PER_SECOND,
    LocalInspector,
    collect_replies,
    request_inspection,
)
from tiercel.core.encoding.prefixes import inspect_reply_key
from tiercel.core.settings import resolve_settings
from tiercel.core.tier.events import Done
from tiercel.tasks.runtime import Runtime

pytestmark = pytest.mark.integration


@pytest.fixture()
def runtimes(cache_url: str) -> Iterator[tuple[Runtime, Runtime]]:
    """Two runtimes of one namespace in this process: each listens and answers."""
    settings = resolve_settings().replace(
        cache_url=cache_url, namespace=f"li-{uuid.uuid4().hex[:8]}"
    )
    first = Runtime(settings, role="worker").start(listen_timeout=5)
    second = Runtime(settings).start(listen_timeout=5)
    yield first, second
    second.close()
    first.close()


def _key(rt: Runtime) -> str:
    return f"{rt.namespace}:v:test.fn:1:{{{uuid.uuid4().hex}}}"


def test_every_process_answers_for_its_own_levels_and_counts_nothing(
    runtimes: tuple[Runtime, Runtime], redis_client: redis.Redis
) -> None:
    holder, _ = runtimes
    key = _key(holder)
    holder.cache.store_local(key, {"v": 1}, None, 60.0, ())
    memory = holder.cache.levels[0]
    before = memory.stats
    reply, receivers = request_inspection(holder.notifier.publish, key)
    assert receivers == 2
    answers = collect_replies(redis_client, holder.namespace, reply, expected=2, window=5.0)
    by_role = {answer["role"]: answer for answer in answers}
    assert set(by_role) == {"worker", "client"}
    held = by_role["worker"]
    assert held["pid"] == holder.identity()["pid"] and held["trusted"] is True
    assert [(level["level"], level["present"]) for level in held["levels"]] == [
        ("memory", True),
        ("bytes", True),
    ]
    assert held["levels"][0]["entries"] == 1 and held["levels"][1]["bytes"] > 0
    for level in held["levels"]:
        assert 0 < level["ttl_left"] <= 60.0, level
        assert level["size"] > 0, "the bytes the entry is charged"
    assert by_role["client"]["levels"][0]["ttl_left"] is None
    assert [level["present"] for level in by_role["client"]["levels"]] == [False, False]
    after = memory.stats
    assert (after.hits, after.misses) == (before.hits, before.misses)
    assert not redis_client.exists(inspect_reply_key(holder.namespace, reply))


def test_answers_are_bounded_in_rate_and_only_go_to_reply_ids(
    runtimes: tuple[Runtime, Runtime], redis_client: redis.Redis
) -> None:
    holder, _ = runtimes
    now = [0.0]
    inspector = LocalInspector(
        redis_client, holder.namespace, holder.cache, holder.identity, clock=lambda: now[0]
    )
    reply = uuid.uuid4().hex
    assert not inspector("k", "not-a-reply-id")
    assert not inspector("k", "../../elsewhere")
    sent = sum(inspector("k", reply) for _ in range(MAX_ANSWERS_PER_SECOND + 5))
    assert sent == MAX_ANSWERS_PER_SECOND and inspector.dropped == 2 + 5
    now[0] = 1.0  # a new second
    assert inspector("k", reply)
    name = inspect_reply_key(holder.namespace, reply)
    assert redis_client.llen(name) == MAX_ANSWERS_PER_SECOND + 1
    assert 0 < redis_client.pttl(name) <= 10_000


def test_the_writer_keeps_the_value_it_wrote_back_and_drops_a_later_one(
    runtimes: tuple[Runtime, Runtime],
) -> None:
    from tiercel.tasks.examples import slow_square

    holder, other = runtimes
    spec = slow_square.tiercel_spec
    keys = []
    for n in range(20):
        assert holder.call(spec, (n, 1), {}).source == "computed"
        keys.append(holder.key(spec, (n, 1), {}))
    # Its own d|key messages have come back by now (one round trip after each).
    reply, _ = request_inspection(holder.notifier.publish, keys[-1])
    collect_replies(holder.tier.client, holder.namespace, reply, expected=2, window=5.0)
    memory = holder.cache.levels[0]
    assert all(key in memory for key in keys)
    # A completion published by another process still drops the copy.
    other.notifier.publish(Done(keys[0]).encode())
    reply, _ = request_inspection(other.notifier.publish, keys[0])
    answers = collect_replies(other.tier.client, other.namespace, reply, expected=2, window=5.0)
    assert keys[0] not in memory and keys[1] in memory
    assert not any(level["present"] for answer in answers for level in answer["levels"])
