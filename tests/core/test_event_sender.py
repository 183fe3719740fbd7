"""Events published from the sender's own thread: in order, bounded, flushed at close."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tiercel.tasks.event_sender import EventSender, PendingEvent


class Dispatcher:
    def __init__(self, sent: list[dict[str, Any]], fail: bool) -> None:
        self.sent, self.fail = sent, fail

    def send(self, type_: str, **fields: Any) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.sent.append({"type": type_, **fields})


class App:
    """What the sender uses of a Celery app: ``events.default_dispatcher``."""

    def __init__(self, *, gate: threading.Event | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.hostnames: list[str | None] = []
        self.fail = False
        self.gate = gate
        self.entered = threading.Event()
        self.events = self

    @contextlib.contextmanager
    def default_dispatcher(self, hostname: str | None = None) -> Iterator[Dispatcher]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(5)
        self.hostnames.append(hostname)
        yield Dispatcher(self.sent, self.fail)


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
        "retry": False,
        "timestamp": events[0].timestamp,
        "n": 0,
    }
    assert set(app.hostnames) == {"w1@host"}
    assert (sender.sent, sender.dropped) == (5, 0)


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
