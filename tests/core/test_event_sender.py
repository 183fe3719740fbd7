"""Events published from the sender's own thread: in order, bounded, flushed at close."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tiercel.tasks.event_sender import BATCH, EventSender, PendingEvent


class Dispatcher:
    """Celery's dispatcher as the sender uses it: buffered sends, one message per flush."""

    def __init__(self, app: App, hostname: str | None, **options: Any) -> None:
        self.app, self.hostname, self.options = app, hostname, options
        self.buffer: list[dict[str, Any]] = []
        self.closed = False

    def send(self, type_: str, **fields: Any) -> None:
        self.buffer.append({"type": type_, **fields})

    def flush(self) -> None:
        if self.app.fail:
            raise ConnectionError("broker down")
        self.app.messages.append(self.buffer)
        self.buffer = []

    def close(self) -> None:
        self.closed = True


class App:
    """What the sender uses of a Celery app: a producer from ``amqp.producer_pool`` and
    ``events.Dispatcher`` on its connection."""

    def __init__(self, *, gate: threading.Event | None = None) -> None:
        self.messages: list[list[dict[str, Any]]] = []
        self.dispatchers: list[Dispatcher] = []
        self.fail = False
        self.gate = gate
        self.entered = threading.Event()
        self.events = self
        self.amqp = self
        self.producer_pool = self
        self.connection, self.channel = object(), object()

    @property
    def sent(self) -> list[dict[str, Any]]:
        return [event for message in self.messages for event in message]

    @contextlib.contextmanager
    def acquire(self, block: bool) -> Iterator[App]:
        assert block
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        yield self

    def Dispatcher(
        self, connection: object, hostname: str | None = None, **options: Any
    ) -> Dispatcher:
        assert connection is self.connection and options["channel"] is self.channel
        dispatcher = Dispatcher(self, hostname, **options)
        self.dispatchers.append(dispatcher)
        return dispatcher


def _event(app: App, n: int) -> PendingEvent:
    return PendingEvent(app, "w1@host", f"task-{n}", "task-tiercel-computed", {"n": n})


def test_events_are_published_in_order_with_their_task_and_timestamp() -> None:
    app, sender = App(), EventSender()
    events = [_event(app, n) for n in range(5)]
    for event in events:
        sender.send(event)
    sender.close()

    assert [e["uuid"] for e in app.sent] == [f"task-{n}" for n in range(5)]
    assert [e["timestamp"] for e in app.sent] == [e.timestamp for e in events]
    assert app.sent[0] == {
        "type": "task-tiercel-computed",
        "uuid": "task-0",
        "timestamp": events[0].timestamp,
        "n": 0,
    }
    assert {d.hostname for d in app.dispatchers} == {"w1@host"}
    assert all(d.closed for d in app.dispatchers)
    assert (sender.sent, sender.dropped) == (5, 0)


def test_events_sent_close_together_go_out_as_one_task_multi_message() -> None:
    app, sender = App(), EventSender(linger=5.0)
    for n in range(5):
        sender.send(_event(app, n))
    sender.close()  # the thread was still lingering for more: close publishes them

    assert [[e["n"] for e in message] for message in app.messages] == [[0, 1, 2, 3, 4]]
    (dispatcher,) = app.dispatchers
    # Celery's dispatcher buffers the "task" group and publishes it as task.multi.
    assert dispatcher.options["buffer_group"] == ("task",)
    assert dispatcher.options["buffer_limit"] > 5


def test_events_of_two_nodes_go_out_in_a_message_each_under_their_node() -> None:
    app, sender = App(), EventSender(linger=5.0)
    for n in range(4):
        event = _event(app, n)
        sender.send(PendingEvent(app, f"w{n % 2}@host", event.task_id, event.type, event.fields))
    sender.close()

    by_node = {
        d.hostname: [e["n"] for e in m] for d, m in zip(app.dispatchers, app.messages, strict=True)
    }
    assert by_node == {"w0@host": [0, 2], "w1@host": [1, 3]}


def test_a_batch_is_at_most_batch_events() -> None:
    app, sender = App(), EventSender(linger=5.0)
    for n in range(BATCH + 3):
        sender.send(_event(app, n))
    sender.close()
    assert [len(message) for message in app.messages] == [BATCH, 3]


def test_a_lone_event_goes_out_when_the_linger_ends_without_a_close() -> None:
    app, sender = App(), EventSender(linger=0.05)
    started = time.monotonic()
    sender.send(_event(app, 0))
    while not app.messages and time.monotonic() - started < 5:
        time.sleep(0.005)
    assert [[e["n"] for e in message] for message in app.messages] == [[0]]
    sender.close()


def test_a_full_queue_drops_and_counts_instead_of_blocking_the_task(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = threading.Event()
    app, sender = App(gate=gate), EventSender(capacity=3)
    sender.send(_event(app, 0))
    assert app.entered.wait(5)  # the thread is publishing event 0, held at the gate
    for n in range(1, 10):  # a send that waited for room would find some: none dropped
        sender.send(_event(app, n))
    gate.set()
    sender.close()

    assert [e["n"] for e in app.sent] == [0, 1, 2, 3]
    assert (sender.sent, sender.dropped) == (4, 6)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "tiercel: 3 events wait for the broker: dropping new ones "
        "(1 dropped in this process so far)"
    ], "once, not per event"


def test_a_failing_broker_costs_the_batch_not_the_thread() -> None:
    app, sender = App(), EventSender()
    app.fail = True
    sender.send(_event(app, 0))
    deadline = time.monotonic() + 5
    while sender.dropped == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sender.dropped == 1

    app.fail = False
    sender.send(_event(app, 1))
    sender.send(_event(app, 2))
    sender.close()
    assert [e["n"] for e in app.sent] == [1, 2]
    assert (sender.sent, sender.dropped) == (2, 1)


def _sender_threads() -> int:
    return sum(t.name == "tiercel-events" and t.is_alive() for t in threading.enumerate())


def test_after_close_events_are_dropped_and_no_thread_starts() -> None:
    app, sender = App(), EventSender()
    before = _sender_threads()  # other tests' runtimes may have one
    sender.close()
    sender.send(_event(app, 0))
    assert (sender.sent, sender.dropped, app.sent) == (0, 1, [])
    assert _sender_threads() == before
