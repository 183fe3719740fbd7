"""Celery's routing and timing options reach the task a ``submit()`` publishes.

``fn.options(queue=..., priority=..., countdown=..., eta=..., expires=...)``
on a real fleet (2 nodes x 2 prefork processes on the fleet's queue) plus one
node that consumes only a queue of its own.
"""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import TaskRevokedError

from tests.fleet_tasks import routed_square
from tests.integration.fleet import celery_workers
from tiercel.core.encoding.cache_key import CacheKey
from tiercel.core.errors import SettingsError
from tiercel.tasks import runtime
from tiercel.workers.control import ping_nodes
from tiercel.workers.launcher import Fleet

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def reports_queue(fleet: Fleet) -> Iterator[str]:
    """A node of the fleet's app that consumes only the queue this returns."""
    queue = f"reports-{uuid.uuid4().hex[:8]}"
    node = f"reports-{uuid.uuid4().hex[:6]}@127.0.0.1"
    with celery_workers(
        "tiercel.workers.app",
        [node],
        cwd=Path.cwd(),
        env=fleet.environment(),
        concurrency=1,
        extra=("-Q", queue),
    ) as (worker,):
        deadline = time.monotonic() + 60
        while not ping_nodes(fleet.settings, [node], timeout=1.0):
            assert worker.poll() is None, "the reports node exited during start-up"
            assert time.monotonic() < deadline, "the reports node did not answer a ping"
        yield queue


def _counter() -> str:
    return f"count:{uuid.uuid4().hex}"


def _computations(counter: str) -> int:
    return int(runtime.current().tier.client.get(counter) or 0)


def test_queue_and_priority_reach_the_published_task(reports_queue: str) -> None:
    counter = _counter()
    submitted = routed_square.options(queue=reports_queue, priority=7).submit(3, counter)
    assert submitted.source == "computed"
    ran: dict[str, Any] = submitted.get(timeout=60)
    assert ran["queue"] == reports_queue and ran["hostname"].startswith("reports-"), ran
    assert ran["priority"] == 7, ran
    again = routed_square.options(queue=reports_queue).submit(3, counter)
    assert again.task_id is None and again.get(timeout=5) == ran, "a hit publishes nothing"
    assert _computations(counter) == 1


def test_a_countdown_delays_the_task_and_later_submits_join_it(fleet: Fleet) -> None:
    counter = _counter()
    before = time.time()
    first = routed_square.options(countdown=2).submit(4, counter)
    joined = routed_square.submit(4, counter)
    assert (first.source, joined.source) == ("computed", "joined")
    assert joined.task_id == first.task_id
    inflight = CacheKey.of(first.key).inflight
    ttl = runtime.current().tier.client.pttl(inflight) / 1000
    assert ttl > runtime.current().settings.inflight_ttl, "the marker outlives the delay"
    ran = first.get(timeout=60)
    assert ran["eta"] is not None and ran["started"] >= before + 1.9, ran
    assert joined.get(timeout=10) == ran and _computations(counter) == 1


def test_an_eta_is_honoured(fleet: Fleet) -> None:
    counter = _counter()
    eta = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1.5)
    ran = routed_square.options(eta=eta).submit(5, counter).get(timeout=60)
    assert ran["started"] >= eta.timestamp() - 0.05, ran


def test_an_expired_task_is_revoked_and_the_next_submit_publishes_again(fleet: Fleet) -> None:
    counter = _counter()
    stale = routed_square.options(countdown=1.5, expires=0.5).submit(6, counter)
    with pytest.raises(TaskRevokedError):
        stale.get(timeout=60)
    inflight = CacheKey.of(stale.key).inflight
    deadline = time.monotonic() + 10
    while runtime.current().tier.client.exists(inflight) and time.monotonic() < deadline:
        time.sleep(0.05)
    fresh = routed_square.submit(6, counter)
    assert fresh.source == "computed", "the revoked task left no in-flight marker to join"
    ran = fresh.get(timeout=60)
    assert ran["expires"] is None and ran["square"] == 36
    assert _computations(counter) == 1, "the expired task never computed"


def test_apply_async_options_are_honoured_and_the_value_is_cached(reports_queue: str) -> None:
    counter = _counter()
    ran = routed_square.apply_async((7, counter), queue=reports_queue).get(timeout=60)
    assert ran["queue"] == reports_queue and ran["square"] == 49
    hit = routed_square.submit(7, counter)
    assert hit.source in ("memory", "redis") and hit.get(timeout=5) == ran


def test_options_that_cannot_hold_for_a_cached_call_are_refused() -> None:
    for refused in ({"task_id": "x"}, {"link": None}, {"link_error": None}):
        with pytest.raises(SettingsError, match="is not accepted"):
            routed_square.options(**refused)
    with pytest.raises(SettingsError, match="countdown must be seconds"):
        routed_square.options(countdown="soon")
    with pytest.raises(SettingsError, match="eta must be a datetime"):
        routed_square.options(eta=12)
    chained = routed_square.options(queue="a").options(priority=3)
    assert repr(chained) == "<tests.fleet_tasks.routed_square.options(queue='a', priority=3)>"


def test_asubmit_and_submit_many_publish_with_the_options_too(reports_queue: str) -> None:
    import asyncio

    import tiercel

    counter = _counter()
    routed = routed_square.options(queue=reports_queue)

    async def main() -> Any:
        try:
            result = await routed.asubmit(9, counter)
            return await result.aget(timeout=60)
        finally:
            await tiercel.aclose()

    ran = asyncio.run(main())
    assert ran["queue"] == reports_queue and ran["square"] == 81
    many = routed.submit_many([(10, counter), (11, counter), (10, counter)])
    assert [result.source for result in many] == ["computed", "computed", "joined"]
    answers = [result.get(timeout=60) for result in many]
    assert {answer["queue"] for answer in answers} == {reports_queue}
    assert [answer["square"] for answer in answers] == [100, 121, 100]
