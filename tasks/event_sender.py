"""Worker events sent from a thread of their own, off the task's path.

Publishing one Celery event costs a broker round trip plus kombu's message
building, about as much as one of the task's own Redis calls. A prefork child
runs one task at a time, so an event published in the task's thread delays
the next task by that much. :class:`EventSender` takes the event (its
timestamp fixed when it is handed over), and one daemon thread of the
process publishes it through Celery's own event dispatcher, as
``Task.send_event`` would.

Batched: the thread gathers what arrives within :data:`LINGER` of the first
event (at most :data:`BATCH`) and publishes it as one ``task.multi`` message,
the list form Celery's own worker uses for its task events and every event
receiver (Flower, ``celery events``) unpacks. Building and publishing a kombu
message per event cost a prefork child more CPU than the cached task's own
bookkeeping; one message per batch shares that cost. Flower sees an event at
most :data:`LINGER` later.

Bounded: at most :data:`CAPACITY` events wait; one that finds the queue
full is dropped and counted (:attr:`EventSender.dropped`): events are for
monitoring, and a task never waits for one. :meth:`EventSender.close`
publishes what is waiting, for up to its timeout, before the process exits.
The thread starts with the first event, in the process that sends it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["CAPACITY", "EventSender", "PendingEvent"]

log = logging.getLogger("tiercel.maintenance")

#: Events waiting to be published, at most.
CAPACITY: Final = 1024
#: Events published in one message, at most.
BATCH: Final = 64
#: Seconds the thread waits, after an event, for more to publish with it.
LINGER: Final = 0.1
#: Seconds between two warnings that events are being dropped.
WARN_EVERY: Final = 60.0


@dataclass(frozen=True)
class PendingEvent:
    """One event to publish: the Celery app, the task's node and id, type and fields."""

    app: Any
    hostname: str | None
    task_id: str
    type: str
    fields: dict[str, Any]
    timestamp: float = field(default_factory=time.time)


class EventSender:
    """Publishes events in a thread of this process; see the module docstring."""

    def __init__(self, capacity: int = CAPACITY, linger: float = LINGER) -> None:
        #: Events to publish; None asks the thread to stop.
        self._queue: queue.Queue[PendingEvent | None] = queue.Queue(maxsize=capacity)
        self._linger = linger
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        #: Events dropped because the queue was full or the sender closed.
        self.dropped = 0
        #: Events handed to the broker.
        self.sent = 0
        self._warned_at: float | None = None

    def send(self, event: PendingEvent) -> None:
        """Queue ``event`` for publishing; never blocks (a full queue drops it)."""
        if self._closed:
            self._count_dropped(1)
            return
        if self._thread is None:
            self._start()
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self._count_dropped(1)
            now = time.monotonic()
            if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
                self._warned_at = now
                log.warning(
                    "tiercel: %d events wait for the broker: dropping new ones "
                    "(%d dropped in this process so far)",
                    self._queue.qsize(),
                    self.dropped,
                )

    def close(self, timeout: float = 2.0) -> None:
        """Publish what is waiting (for up to ``timeout`` seconds), then stop the thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return  # the thread is stuck publishing; it is a daemon and dies with us
        thread.join(timeout)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="tiercel-events", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            deadline = time.monotonic() + self._linger
            while len(batch) < BATCH:
                try:
                    more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._publish(batch)
            if stop:
                return

    def _publish(self, batch: list[PendingEvent]) -> None:
        groups: dict[tuple[int, str | None], list[PendingEvent]] = {}
        for event in batch:
            groups.setdefault((id(event.app), event.hostname), []).append(event)
        for events in groups.values():
            try:
                self._publish_one_message(events)
            except Exception:  # an event is a nicety: never stop the thread for one
                self._count_dropped(len(events))
                log.debug("sending %d events failed", len(events), exc_info=True)
                continue
            with self._lock:
                self.sent += len(events)

    @staticmethod
    def _publish_one_message(events: list[PendingEvent]) -> None:
        """``events`` (one app, one node) as one ``task.multi`` message, through a
        dispatcher on a producer of the app's pool that buffers the ``task`` group until
        :meth:`flush` (built as ``app.events.default_dispatcher`` builds its own, which
        takes no buffering options)."""
        first = events[0]
        app = first.app
        with app.amqp.producer_pool.acquire(block=True) as producer:
            dispatcher = app.events.Dispatcher(
                producer.connection,
                hostname=first.hostname,
                channel=producer.channel,
                buffer_while_offline=False,
                buffer_group=("task",),
                buffer_limit=len(events) + 1,
            )
            try:
                for event in events:
                    dispatcher.send(
                        event.type,
                        uuid=event.task_id,
                        timestamp=event.timestamp,
                        **event.fields,
                    )
                dispatcher.flush()
            finally:
                dispatcher.close()

    def _count_dropped(self, events: int) -> None:
        with self._lock:  # counted from the tasks' thread and the sender's
            self.dropped += events
