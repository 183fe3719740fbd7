"""Cached tasks in Celery's canvas on real worker processes: signatures, chain, group, chord.

The session fleet is 2 prefork nodes x 2 processes. A cached task in a
canvas is published as any task; the worker that runs it answers from the
cache or computes under the fleet-wide lease, so a key shared by several
branches is computed once while every branch still runs and passes its
value on. Computations are counted by ``counted_square`` itself (an INCR).
"""

from __future__ import annotations

import uuid

import pytest
import redis
from celery import chain, chord, group

from tests.fleet_tasks import offset, total
from tiercel.tasks.examples import counted_square
from tiercel.workers.launcher import Fleet

pytestmark = pytest.mark.integration


def counter_name() -> str:
    return f"test:canvas:{uuid.uuid4().hex}"


def fresh() -> tuple[int, str]:
    return uuid.uuid4().int % 10**6, counter_name()


def count(client: redis.Redis, name: str) -> int:
    return int(client.get(name) or 0)


def test_s_and_si_signatures_run_and_cache(fleet: Fleet, cache_client: redis.Redis) -> None:
    n, counter = fresh()
    assert counted_square.s(n, counter, 50).delay().get(timeout=60) == n * n
    assert counted_square.si(n, counter, 50).apply_async().get(timeout=60) == n * n
    assert count(cache_client, counter) == 1
    # A partial .s() in a chain receives the parent's result as its first argument,
    # and caches under the key of the call it made.
    m, other = fresh()
    result = chain(offset.si(m, 0), counted_square.s(other, 50)).apply_async()
    assert result.get(timeout=60) == m * m
    again = counted_square.submit(m, other, 50)
    assert again.source in ("memory", "redis") and again.get() == m * m
    assert count(cache_client, other) == 1


def test_two_chains_with_one_cached_head_compute_it_once_and_run_both_children(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    counter = counter_name()
    # Both heads are published at once and land on different worker processes: one
    # computes under the lease, the other waits for it (celery-once would refuse one).
    first = chain(counted_square.si(42, counter, 600), offset.s(1)).apply_async()
    second = chain(counted_square.si(42, counter, 600), offset.s(2)).apply_async()
    assert first.get(timeout=60) == 42 * 42 + 1
    assert second.get(timeout=60) == 42 * 42 + 2
    assert count(cache_client, counter) == 1
    assert first.parent.get(timeout=5) == second.parent.get(timeout=5) == 42 * 42


def test_a_head_answered_from_the_cache_passes_its_value_on(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    n, counter = fresh()
    assert counted_square.submit(n, counter, 50).get(timeout=60) == n * n
    result = chain(counted_square.si(n, counter, 50), offset.s(10), offset.s(100)).apply_async()
    assert result.get(timeout=60) == n * n + 110
    assert count(cache_client, counter) == 1  # answered from the cache inside the chain


def test_a_group_computes_each_distinct_key_once(fleet: Fleet, cache_client: redis.Redis) -> None:
    (n, a), (m, b) = fresh(), fresh()
    members = [counted_square.s(n, a, 400) for _ in range(4)] + [counted_square.s(m, b, 400)]
    values = group(members).apply_async().get(timeout=60)
    assert values == [n * n] * 4 + [m * m]
    assert (count(cache_client, a), count(cache_client, b)) == (1, 1)


def test_a_chord_over_cached_tasks_sums_them_and_computes_each_key_once(
    fleet: Fleet, cache_client: redis.Redis
) -> None:
    calls = [fresh() for _ in range(3)]
    header = [counted_square.s(n, counter, 200) for n, counter in calls]
    header.append(counted_square.s(*calls[0], 200))  # a duplicate key in the header
    result = chord(header)(total.s())
    assert result.get(timeout=60) == sum(n * n for n, _ in calls) + calls[0][0] ** 2
    assert [count(cache_client, counter) for _, counter in calls] == [1, 1, 1]
