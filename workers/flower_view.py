"""What Flower shows of tiercel: the cache fields on a task's page, client hits in /metrics.

Flower runs a configuration file in its own process (``--conf``);
:mod:`tiercel.workers.flowerconfig` is one, and calls :func:`install`, which:

* makes Flower keep its tasks as :class:`CachedTaskState`. Flower's task page,
  task list and task API show a task's ``_fields`` only, and every copy it
  renders is rebuilt from them (``Task.__reduce__``), so the fields of a cached
  task's ``task-tiercel-<source>`` event (:mod:`tiercel.tasks.source_events`),
  which Celery merges into the task, would be kept but never shown. The
  subclass lists them first: the page gets rows *Tiercel tier*, *Tiercel
  seconds saved* and *Tiercel key* right below the result (absent on other
  tasks: Flower skips empty fields), and ``/api/tasks`` and
  ``/api/task/info`` carry them. Celery's ``State.Task`` is the class its
  state builds tasks from, there to be replaced.
* adds a collector to Flower's ``/metrics`` (Prometheus' default registry,
  which Flower serves): ``tiercel_client_requests_total{task, source}``, the
  requests client processes answered without a task running (a submit-side
  hit from memory or Redis, a join), from the newest fleet view (as ``tiercel
  exporter`` serves it; aggregated every ``TIERCEL_AGGREGATE_INTERVAL``).
  Flower cannot count those from events: no task ran, so no worker sent one.

To combine with a configuration file of your own, call it there::

    from tiercel.workers.flower_view import install
    install()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from celery.events.state import Task

from tiercel.tasks.metrics import CLIENT_REQUESTS
from tiercel.tasks.source_events import FIELDS

__all__ = ["CachedTaskState", "ClientRequestsCollector", "install"]

_installed = threading.Lock()
_collector: ClientRequestsCollector | None = None


class CachedTaskState(Task):  # type: ignore[misc]  # Celery's Task is untyped
    """Celery's monitoring view of a task, with tiercel's event fields among its fields."""

    # First: the page shows fields in this order, so these come right after the result.
    _fields = (*FIELDS, *Task._fields)
    tiercel_tier: str | None = None
    tiercel_seconds_saved: float | None = None
    tiercel_key: str | None = None


class ClientRequestsCollector:
    """A prometheus_client collector of ``tiercel_client_requests_total`` by task and source."""

    def __init__(self, settings: Any = None) -> None:
        self._settings = settings
        self._fleet: Any = None
        self._lock = threading.Lock()

    def _view(self) -> dict[str, Any] | None:
        with self._lock:
            if self._fleet is None:
                from tiercel.core.settings import resolve_settings
                from tiercel.workers.exporter import FleetCollector

                self._fleet = FleetCollector(self._settings or resolve_settings())
        view: dict[str, Any] | None = self._fleet.view()
        return view

    @staticmethod
    def _family() -> Any:
        from prometheus_client.core import CounterMetricFamily

        return CounterMetricFamily(
            CLIENT_REQUESTS,
            "requests client processes answered without a task running, by task and source "
            "(tiercel fleet view)",
            labels=["task", "source"],
        )

    def describe(self) -> Iterator[Any]:
        """What :meth:`collect` yields, without reading anything (asked at registration)."""
        yield self._family()

    def collect(self) -> Iterator[Any]:
        """Called by prometheus_client on every scrape of Flower's ``/metrics``."""
        family = self._family()
        view = self._view()
        if view is not None:
            for item in view["merged"]["counters"]:
                if item["name"] == CLIENT_REQUESTS:
                    labels = item["labels"]
                    family.add_metric(
                        [labels.get("task", ""), labels.get("source", "")], item["value"]
                    )
        yield family


def install(settings: Any = None) -> ClientRequestsCollector:
    """In Flower's process: keep tasks as :class:`CachedTaskState` and register the
    collector on Prometheus' default registry (what ``/metrics`` serves), once; returns
    the collector. ``settings``: default, this process's."""
    global _collector
    from flower.events import EventsState

    with _installed:
        # Read when Flower builds its state, after its configuration file ran.
        EventsState.Task = CachedTaskState
        _stop_cleanly_on_sigterm()
        if _collector is None:
            from prometheus_client import REGISTRY

            collector = ClientRequestsCollector(settings)
            REGISTRY.register(collector)
            _collector = collector
        return _collector


def _stop_cleanly_on_sigterm() -> None:
    """Have Flower stop its event loop on SIGTERM instead of raising ``SystemExit``.

    Flower's handler calls ``sys.exit(0)`` inside the signal handler, and the
    exception lands in whatever frame runs then: seen landing in a ``WeakSet``
    callback, whose exceptions Python ignores, so Flower ran on until a service
    manager killed it. Flower installs ``flower.command.sigterm_handler`` after
    this configuration file ran, so replacing that name is enough.
    """
    import flower.command

    flower.command.sigterm_handler = _stop_on_sigterm


def _stop_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    """Stop the IOLoop on its next turn: ``Flower.start`` returns and the process exits
    normally (``atexit`` runs Flower's own ``stop``)."""
    from tornado.ioloop import IOLoop

    logging.getLogger("flower.command").info("signal %s: stopping the event loop", signum)
    loop = IOLoop.current()
    loop.asyncio_loop.call_soon_threadsafe(loop.stop)  # type: ignore[attr-defined]
