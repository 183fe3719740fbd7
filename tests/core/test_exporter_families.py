"""The exporter's families beside the fleet view: delivery latency, the bound, queue lengths."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

import pytest
from celery import Celery
from kombu import Exchange, Producer, Queue

from tiercel.core.metrics.names import INVALIDATION_DELIVERY_SECONDS
from tiercel.core.metrics.registry import MetricsRegistry
from tiercel.core.settings import Settings
from tiercel.tasks.fleet_view import build_view
from tiercel.workers.exporter import STALENESS_BOUND, FleetCollector, families
from tiercel.workers.queue_lengths import (
    QUEUE_LENGTH,
    QueueLengthCollector,
    QueueLengths,
    read_lengths,
    routed_queues,
)


def _samples(family_list: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in family_list
        for sample in family.samples
    }


# -- invalidation delivery and the bound ----------------------------------------------------


def test_delivery_latencies_are_exported_as_summary_and_histogram_per_listener() -> None:
    registry = MetricsRegistry()
    for seconds in (0.002, 0.004, 0.3):
        registry.observe(INVALIDATION_DELIVERY_SECONDS, seconds, listener="notifier")
    registry.observe(INVALIDATION_DELIVERY_SECONDS, 0.01, listener="asyncio")
    view = build_view([{"snapshot": registry.snapshot(), "node": "n1"}], interval=10.0)
    delivery = view["processes"][0]["invalidation_delivery"]
    assert delivery["count"] == 4 and delivery["max"] == pytest.approx(0.3, rel=0.02)
    assert view["fleet"]["invalidation_delivery"]["count"] == 4
    exported = _samples(families(view))
    histogram = "tiercel_invalidation_delivery_seconds_histogram"
    assert exported[(histogram + "_count", (("listener", "notifier"),))] == 3
    assert exported[(histogram + "_bucket", (("le", "0.005"), ("listener", "notifier")))] == 2
    assert exported[(histogram + "_bucket", (("le", "+Inf"), ("listener", "notifier")))] == 3
    assert exported[(histogram + "_count", (("listener", "asyncio"),))] == 1
    assert ("tiercel_invalidation_delivery_seconds_count", (("listener", "asyncio"),)) in exported


def test_a_view_without_probes_says_none_were_heard() -> None:
    view = build_view([{"snapshot": MetricsRegistry().snapshot(), "node": "n1"}], interval=10.0)
    assert view["processes"][0]["invalidation_delivery"] is None


def test_the_bound_is_served_with_or_without_a_fleet_view(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    collector = FleetCollector(Settings(staleness_bound=2.5))
    monkeypatch.setattr(collector, "view", lambda: None)  # no aggregation yet
    assert _samples(collector.collect()) == {(STALENESS_BOUND, ()): 2.5}


# -- which queues -----------------------------------------------------------------------------


def test_the_queues_are_the_default_task_queues_beat_entries_and_routes() -> None:
    app = Celery("q", broker="memory://", set_as_current=False)
    app.conf.task_default_queue = "main"
    app.conf.task_queues = [Queue("main"), Queue("reports", Exchange("reports"))]
    app.conf.beat_schedule = {
        "tiercel-aggregate": {"task": "tiercel.metrics.aggregate", "schedule": 20.0},
        "nightly": {"task": "x", "schedule": 60.0, "options": {"queue": "batch"}},
        "aside": {"task": "y", "schedule": 60.0, "options": {"queue": Queue("aside")}},
    }
    app.conf.task_routes = {"a.*": {"queue": "routed"}, "b": "named", "c": {"exchange": "e"}}
    assert routed_queues(app) == ["main", "reports", "batch", "aside", "routed", "named"]


def test_an_app_with_no_queue_settings_routes_to_celery() -> None:
    app = Celery("q", broker="memory://", set_as_current=False)
    assert routed_queues(app) == ["celery"]
    app.conf.task_queues = {"dict-form": {}}
    app.conf.task_routes = [{"t": {"queue": "listed"}}, "some.router.path"]
    assert routed_queues(app) == ["celery", "dict-form", "listed"]


# -- reading the broker ---------------------------------------------------------------------


def _memory_app() -> tuple[Celery, str]:
    return Celery("q", broker="memory://", set_as_current=False), f"q-{uuid.uuid4().hex[:8]}"


def _publish(app: Celery, queue: str, n: int) -> None:
    with app.connection_for_write() as connection:
        producer = Producer(connection.channel())
        for i in range(n):
            producer.publish({"n": i}, routing_key=queue, exchange="", declare=[Queue(queue)])


def test_waiting_messages_are_counted_and_an_undeclared_queue_counts_0() -> None:
    app, queue = _memory_app()
    _publish(app, queue, 3)
    lengths = read_lengths(app, [f"{queue}-never", queue, f"{queue}-nor"], connect_timeout=1)
    assert lengths == {f"{queue}-never": 0, queue: 3, f"{queue}-nor": 0}
    # Passive: nothing was declared.
    with app.connection_for_read() as connection, pytest.raises(connection.channel_errors):
        connection.channel().queue_declare(queue=f"{queue}-never", passive=True)


def test_the_collector_serves_one_gauge_per_routed_queue() -> None:
    app, queue = _memory_app()
    app.conf.task_default_queue = queue
    app.conf.task_queues = [Queue(queue), Queue(f"{queue}-idle")]
    _publish(app, queue, 2)
    exported = _samples(QueueLengthCollector(app).collect())
    assert exported == {
        (QUEUE_LENGTH, (("queue", queue),)): 2,
        (QUEUE_LENGTH, (("queue", f"{queue}-idle"),)): 0,
    }


def test_an_unreachable_broker_serves_nothing_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    from tiercel.core.embedded.redis_server import free_port

    app = Celery("q", broker=f"redis://127.0.0.1:{free_port()}/0", set_as_current=False)
    collector = QueueLengthCollector(app, budget=2.0)
    with caplog.at_level(logging.WARNING, logger="tiercel.exporter"):
        assert list(collector.collect()) == []
    assert collector.lengths.failures == 1
    assert any("serving none" in record.getMessage() for record in caplog.records)


# -- caching and the time budget ------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_reading_answers_scrapes_for_its_cache_period() -> None:
    clock = FakeClock()
    readings = iter([{"a": 1}, {"a": 5}])
    lengths = QueueLengths(lambda: next(readings), cache_seconds=5.0, clock=clock)
    assert lengths.get() == {"a": 1}
    clock.now = 4.0
    assert lengths.get() == {"a": 1}, "cached"
    clock.now = 5.5
    assert lengths.get() == {"a": 5}


def test_a_late_reading_serves_nothing_runs_once_and_is_used_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    release = threading.Event()
    calls: list[int] = []

    def slow() -> dict[str, int]:
        calls.append(1)
        release.wait(10)
        return {"a": 7}

    lengths = QueueLengths(slow, cache_seconds=5.0, budget=0.05, clock=clock)
    with caplog.at_level(logging.DEBUG, logger="tiercel.exporter"):
        assert lengths.get() is None
        clock.now = 6.0
        assert lengths.get() is None, "still running: waited on, not started again"
    assert len(calls) == 1 and lengths.failures == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no answer within 0.05s" in warnings[0].getMessage()
    release.set()
    clock.now = 12.0
    assert lengths.get() == {"a": 7}
    assert len(calls) in (1, 2), "the late one, if still running, else a new one"


def test_a_failing_reading_serves_nothing_then_recovers() -> None:
    clock = FakeClock()
    answers: list[Any] = [ConnectionError("refused"), {"a": 2}]

    def read() -> dict[str, int]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)

    lengths = QueueLengths(read, cache_seconds=5.0, clock=clock)
    assert lengths.get() is None
    clock.now = 1.0
    assert lengths.get() is None, "a failure is not retried within the cache period"
    clock.now = 6.0
    assert lengths.get() == {"a": 2}
    assert lengths.failures == 1
