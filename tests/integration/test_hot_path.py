"""A cached task's hit path on a real runtime: the hot memo answers, counts and steps aside."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from celery.app.task import Context

from tiercel.tasks import runtime
from tiercel.tasks.cached import INFLIGHT_HEADER, REFRESH_HEADER, cached_task
from tiercel.tasks.event_sender import PendingEvent
from tiercel.tasks.metrics import REQUESTS

pytestmark = pytest.mark.integration


def _task() -> tuple[Any, list[int]]:
    computed: list[int] = []

    @cached_task(ttl=60, name=f"tests.hot_path.square.{uuid.uuid4().hex[:8]}", tags=("squares",))
    def square(n: int) -> int:
        computed.append(n)
        return n * n

    return square, computed


def _requests(name: str) -> dict[str, float]:
    snapshot = runtime.current().metrics.snapshot()
    return {
        sample["labels"]["source"]: sample["value"]
        for sample in snapshot["counters"]
        if sample["name"] == REQUESTS and sample["labels"].get("task") == name
    }


def test_counts_by_source_are_the_same_with_the_memo(cache_url: str) -> None:
    square, computed = _task()
    for _ in range(10):
        assert square.cached_call(3) == 9
    assert square.cached_call(4) == 16
    for _ in range(5):
        result = square.submit(4)
        assert (result.get(timeout=5), result.source, result.task_id) == (16, "memory", None)
    assert computed == [3, 4]
    # One count per request, by where the answer came from, as before the memo: the
    # memo's answers are memory-level answers.
    assert _requests(square.name) == {"computed": 2, "memory": 14}
    assert square.tiercel_hot.memo.hits >= 10  # the memo did answer most of them


def test_invalidation_by_key_tag_and_version_reaches_the_memo(cache_url: str) -> None:
    square, computed = _task()
    for _ in range(3):
        square.cached_call(5)
    square.invalidate(5)
    assert square.cached_call(5) == 25 and computed == [5, 5]
    for _ in range(3):
        square.cached_call(5)
    square.invalidate_tag("squares")
    assert square.cached_call(5) == 25 and computed == [5, 5, 5]
    for _ in range(3):
        square.cached_call(5)
    square.invalidate_all()
    assert square.cached_call(5) == 25 and computed == [5, 5, 5, 5]
    for _ in range(3):
        square.cached_call(5)
    runtime.invalidate_namespace()
    assert square.cached_call(5) == 25 and computed == [5, 5, 5, 5, 5]


def test_the_body_in_a_worker_answers_from_the_memo_and_tells_flower(
    cache_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    square, computed = _task()
    task = square._get_current_object()
    for _ in range(3):
        square.cached_call(6)
    rt = runtime.current()
    rt.recorder.last()
    monkeypatch.setitem(task.app.conf, "worker_send_task_events", True)
    sent: list[PendingEvent] = []
    monkeypatch.setattr(rt.events, "send", sent.append)
    task_id = str(uuid.uuid4())
    task.request_stack.push(Context(id=task_id, args=(6,), kwargs={}))
    try:
        hits = square.tiercel_hot.memo.hits
        assert task.run(6) == 36
        assert square.tiercel_hot.memo.hits == hits + 1
    finally:
        task.request_stack.pop()
    rt.after_task(task, task_id, "SUCCESS", (6,), {})  # what task_postrun runs
    events = [(event.type, event.fields) for event in sent]
    assert [event.task_id for event in sent] == [task_id] and sent[0].app is task.app
    assert [kind for kind, _ in events] == ["task-tiercel-memory"]
    assert events[0][1]["tiercel_tier"] == "memory"
    assert events[0][1]["tiercel_key"] == rt.key(square.tiercel_spec, (6,), {})
    assert computed == [6]


@pytest.mark.parametrize("header", [REFRESH_HEADER, INFLIGHT_HEADER])
def test_a_request_asking_more_than_the_value_takes_the_full_path(
    cache_url: str, header: str
) -> None:
    square, computed = _task()
    task = square._get_current_object()
    for _ in range(3):
        square.cached_call(8)
    task.request_stack.push(Context(id=str(uuid.uuid4()), args=(8,), kwargs={}, **{header: True}))
    try:
        hits = square.tiercel_hot.memo.hits
        assert task.run(8) == 64
        assert square.tiercel_hot.memo.hits == hits
    finally:
        task.request_stack.pop()
    # The full path: and there, a refresh that finds the value fresh (another refresh
    # wrote it since it was asked for) has nothing left to refresh.
    assert computed == [8]


def test_a_submitted_task_claims_first_and_a_value_written_since_answers_it(
    cache_url: str,
) -> None:
    # Published by submit (the in-flight header): the body skips the Redis read before
    # the lease claim, and the real claim script reports the value another process wrote.
    square, computed = _task()
    rt = runtime.current()
    key = rt.key(square.tiercel_spec, (12,), {})
    rt.cache.tier.set(key, 144, ttl=60)
    rt.leases.claim_inflight(key, task_id := str(uuid.uuid4()), 30)
    task = square._get_current_object()
    task.request_stack.push(Context(id=task_id, args=(12,), kwargs={}, **{INFLIGHT_HEADER: True}))
    try:
        assert task.run(12) == 144
    finally:
        task.request_stack.pop()
    assert computed == []
    assert rt.leases.claim_inflight(key, str(uuid.uuid4()), 30) is None, "marker cleared"

    task.request_stack.push(
        Context(id=str(uuid.uuid4()), args=(13,), kwargs={}, **{INFLIGHT_HEADER: True})
    )
    try:
        assert task.run(13) == 169
    finally:
        task.request_stack.pop()
    assert computed == [13]
    assert rt.cache.tier.get(rt.key(square.tiercel_spec, (13,), {})) == 169


def test_a_new_runtime_gets_a_new_memo(cache_url: str) -> None:
    square, computed = _task()
    for _ in range(3):
        square.cached_call(9)
    old = square.tiercel_hot.memo
    runtime.start()
    try:
        assert square.cached_call(9) == 81
        assert square.tiercel_hot.memo is not old
        assert square.tiercel_hot.memo.owner is runtime.current()
    finally:
        runtime.shutdown()
    assert computed == [9]  # the new runtime read the value from Redis


def test_a_bound_task_is_keyed_without_itself_on_every_path(cache_url: str) -> None:
    computed: list[int] = []

    @cached_task(ttl=60, bind=True, name=f"tests.hot_path.bound.{uuid.uuid4().hex[:8]}")
    def triple(self: Any, n: int) -> int:
        computed.append(n)
        return 3 * n

    assert [triple.cached_call(2) for _ in range(4)] == [6] * 4
    result = triple.submit(2)
    assert (result.get(timeout=5), result.source) == (6, "memory")
    task = triple._get_current_object()
    assert task.run(2) == 6  # Celery passes the task first; the memo keys the rest
    assert computed == [2]
    assert triple.tiercel_hot.memo.hits >= 3


def test_memo_answers_are_timed_with_their_weight(cache_url: str) -> None:
    from tiercel.core.metrics.names import REQUEST_SECONDS
    from tiercel.core.metrics.snapshots import sketch_of
    from tiercel.tasks.metrics import SAMPLE_EVERY

    square, _ = _task()
    rt = runtime.current()
    before = sketch_of(rt.metrics.snapshot(), REQUEST_SECONDS, source="memory")
    for _ in range(2 + 3 * SAMPLE_EVERY):
        square.cached_call(12)
    after = sketch_of(rt.metrics.snapshot(), REQUEST_SECONDS, source="memory")
    assert after is not None
    grown = after.count - (before.count if before is not None else 0)
    # Three timed memo answers of weight SAMPLE_EVERY at least, as every call is timed.
    assert grown >= 3 * SAMPLE_EVERY
    assert square.tiercel_hot.memo.hits >= 3 * SAMPLE_EVERY
