"""The fleet on RabbitMQ: an AMQP broker, with results and the cache tier on Redis.

A private fleet (2 prefork nodes x 2 processes) consumes a queue whose name is
unique to this test run (``TIERCEL_QUEUE``), so no other session's workers on
the shared RabbitMQ take its tasks; the queue and its exchange are deleted at
the end. The client side runs in a spawned process whose Celery app publishes
to RabbitMQ (this test process's app stays on the session's Redis broker).

The broker is ``TIERCEL_TEST_AMQP_URL`` (``.ci/run`` sets it to the machine's
RabbitMQ, ``amqp://guest:guest@127.0.0.1:5672//``). Unset, the fleet tests
are reported as not run (:mod:`tests.services`); set but unreachable, they fail.
"""

from __future__ import annotations

import multiprocessing
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tests.services import amqp_url
from tiercel.core.errors import ServerError, SettingsError
from tiercel.core.settings import Settings, resolve_settings
from tiercel.workers.launcher import Fleet, FleetSpec, check_reachable


def _delete_queue(url: str, queue: str) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=5) as conn:
        channel = conn.channel()
        try:
            channel.queue_delete(queue)
            channel.exchange_delete(queue)  # Celery names the direct exchange after the queue
        finally:
            channel.close()


def _message_count(queue: str) -> int:
    from kombu import Connection

    with Connection(os.environ["TIERCEL_TEST_AMQP_URL"], connect_timeout=5) as conn:
        channel = conn.channel()
        try:
            return int(channel.queue_declare(queue, passive=True).message_count)
        finally:
            channel.close()


@pytest.fixture(scope="module")
def rabbit_fleet() -> Iterator[Fleet]:
    """Two prefork nodes on RabbitMQ, consuming a queue unique to this run."""
    url = amqp_url()
    try:
        check_reachable("RabbitMQ broker", url, timeout=3.0)
    except ServerError as exc:
        pytest.fail(f"{exc}; TIERCEL_TEST_AMQP_URL names a RabbitMQ that does not answer")
    # This process keeps its own app and runtime on the session's Redis broker: build
    # them before the environment below points new processes at RabbitMQ.
    import tiercel.workers.app  # noqa: F401
    from tiercel.tasks import runtime

    runtime.current()
    queue = f"tiercel-test-{uuid.uuid4().hex[:12]}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIERCEL_BROKER_URL", url)
        patch.setenv("TIERCEL_QUEUE", queue)
        settings = resolve_settings()  # result backend and cache stay on Redis
        assert settings.result_backend and settings.result_backend.startswith("redis")
        spec = FleetSpec(
            workers=2, concurrency=2, beat=False, flower=False, loglevel="WARNING", grace=15.0
        )
        fleet = Fleet(settings, spec)
        try:
            with fleet.running():
                yield fleet
        finally:
            _delete_queue(url, queue)


def _client(scenario: str, n: int, counter: str, out: Any) -> None:
    """Runs in a spawned process whose environment points at RabbitMQ."""
    from concurrent.futures import ThreadPoolExecutor

    from celery import signals

    import tiercel.workers.app
    from tiercel.tasks.examples import counted_square, noop, slow_square

    report: dict[str, Any] = {
        "broker": tiercel.workers.app.app.conf.broker_url.split(":")[0],
        "queue": tiercel.workers.app.app.conf.task_default_queue,
    }
    published: list[str] = []
    signals.before_task_publish.connect(lambda **_: published.append("x"), weak=False)
    if scenario == "round_trip":
        noop.delay().get(timeout=60)
        first = slow_square.submit(n, 50)
        report["first"] = (first.source, first.get(timeout=60))
        again = slow_square.submit(n, 50)
        report["again"] = (again.source, again.get(timeout=60))
    elif scenario == "coalesce":
        with ThreadPoolExecutor(16) as pool:
            handles = list(pool.map(lambda _: counted_square.submit(n, counter, 500), range(40)))
        report["values"] = [handle.get(timeout=60) for handle in handles]
        report["sources"] = [handle.source for handle in handles]
    elif scenario == "single_flight":
        results = [counted_square.delay(n, counter, 400) for _ in range(8)]
        report["values"] = [result.get(timeout=60) for result in results]
    report["published"] = len(published)
    out.put(report)


def _run_client(scenario: str, n: int, counter: str) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=_client, args=(scenario, n, counter, out))
    process.start()  # inherits os.environ now: TIERCEL_BROKER_URL is the AMQP URL
    try:
        report: dict[str, Any] = out.get(timeout=90)
    finally:
        process.join(30)
        if process.is_alive():
            process.kill()
    assert report["broker"] == "amqp" and report["queue"] == os.environ["TIERCEL_QUEUE"]
    return report


def _fresh() -> tuple[int, str]:
    n = uuid.uuid4().int % 10**9
    return n, f"test:rabbit:count:{n}"


def test_result_round_trip_on_rabbitmq(rabbit_fleet: Fleet) -> None:
    n, _ = _fresh()
    report = _run_client("round_trip", n, "")
    assert report["first"] == ("computed", n * n)
    source, value = report["again"]
    assert source in ("memory", "redis") and value == n * n  # answered from a cache
    assert report["published"] == 2  # the no-op and the one computation: no second task
    assert _message_count(os.environ["TIERCEL_QUEUE"]) == 0


def test_concurrent_submissions_publish_one_task_on_rabbitmq(
    rabbit_fleet: Fleet, redis_client: redis.Redis
) -> None:
    n, counter = _fresh()
    report = _run_client("coalesce", n, counter)
    assert report["values"] == [n * n] * 40
    assert report["published"] == 1
    assert report["sources"].count("computed") == 1
    assert int(redis_client.get(counter) or 0) == 1


def test_duplicate_tasks_compute_once_on_rabbitmq(
    rabbit_fleet: Fleet, redis_client: redis.Redis
) -> None:
    # .delay() skips submit-side coalescing: 8 messages reach the 4 worker processes,
    # and the fleet-wide lease leaves exactly one computation.
    n, counter = _fresh()
    report = _run_client("single_flight", n, counter)
    assert report["values"] == [n * n] * 8
    assert report["published"] == 8
    assert int(redis_client.get(counter) or 0) == 1


def test_queue_setting_is_validated_and_reaches_celery() -> None:
    from tiercel.workers.config import celery_config

    settings = Settings.from_env({"TIERCEL_QUEUE": "team-a.reports"})
    assert celery_config(settings)["task_default_queue"] == "team-a.reports"
    assert celery_config(Settings())["task_default_queue"] == "celery"
    for bad in ("amq.reserved", "has space", "x" * 201):
        with pytest.raises(SettingsError, match="TIERCEL_QUEUE"):
            Settings.from_env({"TIERCEL_QUEUE": bad})


def test_the_exporters_queue_lengths_read_amqp_queues_without_declaring_any() -> None:
    from celery import Celery
    from kombu import Connection, Producer, Queue

    from tiercel.workers.queue_lengths import read_lengths

    url = amqp_url()
    try:
        check_reachable("RabbitMQ broker", url, timeout=3.0)
    except ServerError as exc:
        pytest.fail(f"TIERCEL_TEST_AMQP_URL={url} does not answer: {exc}")
    queue = f"tiercel-lengths-{uuid.uuid4().hex[:8]}"
    app = Celery("lengths", broker=url, set_as_current=False)
    with Connection(url, connect_timeout=5) as conn:
        producer = Producer(conn.channel())
        for n in range(2):
            producer.publish({"n": n}, routing_key=queue, exchange="", declare=[Queue(queue)])
    try:
        # A missing queue closes the AMQP channel that asked; the next one still answers.
        names = [f"{queue}-never", queue, f"{queue}-nor"]
        lengths = read_lengths(app, names, connect_timeout=5)
        assert lengths == {f"{queue}-never": 0, queue: 2, f"{queue}-nor": 0}
        with pytest.raises(Exception, match="NOT_FOUND"):
            _message_count(f"{queue}-never")  # passive: it was not created
    finally:
        _delete_queue(url, queue)
