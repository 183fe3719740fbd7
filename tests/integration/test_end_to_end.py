"""The first cached task, end to end through real worker processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import signals

from tiercel.tasks.examples import slow_square
from tiercel.workers.launcher import Fleet


@pytest.fixture()
def publishes() -> Iterator[list[str]]:
    """Names of the tasks this process publishes to the broker during the test."""
    seen: list[str] = []

    def count(sender: Any = None, **_: Any) -> None:
        seen.append(str(sender))

    signals.before_task_publish.connect(count, weak=False)
    yield seen
    signals.before_task_publish.disconnect(count)


def test_first_submit_computes_on_a_worker_then_redis_answers(
    fleet: Fleet, publishes: list[str]
) -> None:
    n = uuid.uuid4().int % 10_000 + 10_000

    first = slow_square.submit(n)
    assert first.source == "computed"
    assert first.task_id is not None
    assert first.get(timeout=30) == n * n
    assert publishes == ["tiercel.tasks.examples.slow_square"]

    # get() read the value from the cache when the worker wrote it: it is local now.
    second = slow_square.submit(n)
    assert second.source == "memory"
    assert second.task_id is None and second.ready()
    assert second.get() == n * n

    from tiercel.tasks import runtime

    runtime.current().cache.clear_local()
    third = slow_square.submit(n)
    assert third.source == "redis"
    assert third.task_id is None and third.get() == n * n
    assert publishes == ["tiercel.tasks.examples.slow_square"], "a hit must publish nothing"


def test_plain_delay_uses_the_worker_side_cache(fleet: Fleet) -> None:
    n = uuid.uuid4().int % 10_000 + 30_000
    assert slow_square.delay(n).get(timeout=30) == n * n
    # The worker wrote the value through to Redis: a submit now hits without a task.
    again = slow_square.submit(n)
    assert again.source == "redis" and again.get() == n * n


def test_every_node_answers_ping(fleet: Fleet) -> None:
    from tiercel.workers.control import ping_nodes

    assert ping_nodes(fleet.settings, fleet.node_names, timeout=2.0) == set(fleet.node_names)


def test_a_task_with_no_local_levels_is_answered_by_redis_every_time(fleet: Fleet) -> None:
    from tiercel.tasks import runtime
    from tiercel.tasks.examples import shared_only

    n = uuid.uuid4().int % 10_000
    assert shared_only.submit(n).get(timeout=30) == 3 * n
    again = shared_only.submit(n)
    assert again.source == "redis" and again.get() == 3 * n
    key = again.key
    assert all(key not in level for level in runtime.current().cache.levels)
