"""How many messages wait in each broker queue the app routes to, for the exporter.

A backlog is what the fleet's own figures cannot show: a message no worker has
taken yet is in no process's snapshot. The exporter therefore asks the broker
itself, through kombu, which answers the same way for Redis and AMQP brokers:
``channel.queue_declare(queue, passive=True).message_count`` on a connection
from ``app.connection_for_read()``. Passive: a queue is never created, and one
that does not exist yet (on Redis, also an empty one, whose list is gone) counts
0. Messages a worker took and has not acknowledged are not waiting and are not
counted.

The queues (:func:`routed_queues`) are the app's default queue, its
``task_queues``, the queues its beat entries (tiercel's periodic tasks among
them) and plain ``task_routes`` name. tiercel's periodic tasks have no queue of
their own: they go to the default queue unless an entry says otherwise.

A scrape never waits on the broker for long, nor fails because of it
(:class:`QueueLengths`): a reading is cached for a few seconds, at most one runs
at a time, and one that takes longer than its budget or fails serves nothing
(the family is then absent, which an alert's ``absent()`` can catch) with a
warning once per outage.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

__all__ = [
    "BUDGET_SECONDS",
    "CACHE_SECONDS",
    "QUEUE_LENGTH",
    "QueueLengthCollector",
    "QueueLengths",
    "read_lengths",
    "routed_queues",
]

log = logging.getLogger("tiercel.exporter")

#: Gauge: messages waiting in a broker queue [queue].
QUEUE_LENGTH: Final = "tiercel_queue_length"
#: Seconds one reading answers scrapes (the fleet view is cached as long).
CACHE_SECONDS: Final = 5.0
#: Longest a scrape waits for a reading before it serves none.
BUDGET_SECONDS: Final = 2.0


def _name(queue: Any) -> str | None:
    """A queue's name: a kombu ``Queue``'s ``name``, or the string itself."""
    if isinstance(queue, str):
        return queue or None
    name = getattr(queue, "name", None)
    return name if isinstance(name, str) and name else None


def routed_queues(app: Any) -> list[str]:
    """The names of the queues ``app`` routes to, the default queue first, no repeats."""
    conf = app.conf
    found: list[str | None] = [_name(conf.task_default_queue) or "celery"]
    queues = conf.task_queues or ()
    found += [_name(q) for q in (queues.keys() if isinstance(queues, Mapping) else queues)]
    for entry in (conf.beat_schedule or {}).values():
        options = entry.get("options") if isinstance(entry, Mapping) else None
        if isinstance(options, Mapping):
            found.append(_name(options.get("queue")))
    routes = conf.task_routes
    for table in routes if isinstance(routes, (list, tuple)) else [routes]:
        if isinstance(table, Mapping):
            for route in table.values():
                # A route is options ({"queue": ...}) or, as Celery reads it, a queue name.
                found.append(_name(route.get("queue") if isinstance(route, Mapping) else route))
    return list(dict.fromkeys(name for name in found if name))


def read_lengths(app: Any, queues: Iterable[str], *, connect_timeout: float) -> dict[str, int]:
    """Messages waiting in each of ``queues`` (0 for one that does not exist).

    Raises what the broker raises when it cannot be reached.
    """
    lengths: dict[str, int] = {}
    with app.connection_for_read(connect_timeout=connect_timeout) as connection:
        connection.connect()  # one attempt, not the app's retry policy
        missing = connection.channel_errors
        channel = connection.channel()
        try:
            for name in queues:
                try:
                    lengths[name] = int(
                        channel.queue_declare(queue=name, passive=True).message_count
                    )
                except missing:
                    # Not declared yet. AMQP closes the channel that asked: take a new one.
                    lengths[name] = 0
                    _close(channel)
                    channel = connection.channel()
        finally:
            _close(channel)
    return lengths


def _close(channel: Any) -> None:
    try:
        channel.close()
    except Exception:  # a channel the server closed may fail to close again
        log.debug("closing a broker channel failed", exc_info=True)


class QueueLengths:
    """The latest reading of ``read`` (queue -> messages), cached, bounded in time.

    :meth:`get` answers from a reading at most ``cache_seconds`` old; otherwise it
    starts one in a thread (unless one still runs) and waits at most ``budget``
    seconds for it. A reading that fails or is late answers None (nothing to
    serve) until the next one is due, with one warning per outage.
    """

    def __init__(
        self,
        read: Callable[[], dict[str, int]],
        *,
        cache_seconds: float = CACHE_SECONDS,
        budget: float = BUDGET_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self.cache_seconds = cache_seconds
        self.budget = budget
        self._clock = clock
        self._lock = threading.Lock()
        self._lengths: dict[str, int] | None = None
        self._loaded: float | None = None
        self._running: threading.Thread | None = None
        self._result: dict[str, int] | BaseException | None = None
        self._failing = False
        #: Readings that failed or came too late.
        self.failures = 0

    def get(self) -> dict[str, int] | None:
        """Messages waiting per queue, or None when the broker did not answer in time."""
        with self._lock:
            if self._loaded is not None and self._clock() - self._loaded <= self.cache_seconds:
                return self._lengths
            if self._running is None or not self._running.is_alive():
                self._result = None
                self._running = threading.Thread(
                    target=self._reading, name="tiercel-queue-lengths", daemon=True
                )
                self._running.start()
            running = self._running
            running.join(self.budget)
            result = self._result if not running.is_alive() else None
            if isinstance(result, dict):
                self._lengths = result
                if self._failing:
                    log.info("queue lengths: the broker answers again")
                self._failing = False
            else:
                self.failures += 1
                self._lengths = None
                why = (
                    f"no answer within {self.budget:g}s"
                    if result is None
                    else f"{type(result).__name__}: {result}"
                )
                log.log(
                    logging.DEBUG if self._failing else logging.WARNING,
                    "queue lengths: reading the broker failed (%s); serving none",
                    why,
                )
                self._failing = True
            self._loaded = self._clock()
            return self._lengths

    def _reading(self) -> None:
        try:
            self._result = self._read()
        except Exception as exc:  # reported by get(), never raised into a scrape
            self._result = exc


class QueueLengthCollector:
    """A prometheus_client collector of :data:`QUEUE_LENGTH` for ``app``'s queues."""

    def __init__(
        self,
        app: Any,
        *,
        queues: Iterable[str] | None = None,
        cache_seconds: float = CACHE_SECONDS,
        budget: float = BUDGET_SECONDS,
    ) -> None:
        self.queues = list(queues) if queues is not None else routed_queues(app)
        self.lengths = QueueLengths(
            lambda: read_lengths(app, self.queues, connect_timeout=budget),
            cache_seconds=cache_seconds,
            budget=budget,
        )

    def collect(self) -> Iterator[Any]:
        """Called by prometheus_client on every scrape."""
        lengths = self.lengths.get()
        if lengths is not None:
            yield family(lengths)


def family(lengths: Mapping[str, int]) -> Any:
    """The :data:`QUEUE_LENGTH` gauge family of one reading."""
    from prometheus_client.core import GaugeMetricFamily

    gauge = GaugeMetricFamily(
        QUEUE_LENGTH, "messages waiting in a broker queue the app routes to", labels=["queue"]
    )
    for name, count in sorted(lengths.items()):
        gauge.add_metric([name], count)
    return gauge
