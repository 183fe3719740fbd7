"""QuietTask: a task that sends no monitoring events, so Flower never lists it.

tiercel's periodic tasks (sweep every minute, aggregation every 20 s,
housekeeping) would otherwise fill Flower's task list, which keeps a bounded
number of tasks, and push the user's own tasks out of it. Celery asks two
parties for events about a task:

* the worker (``task-received``, ``-started``, ``-succeeded``, ``-failed``),
  which checks the task's own ``send_events`` attribute: False here;
* the sender (``task-sent``, when ``task_send_sent_event`` is on, as in
  tiercel's own app and in many users' apps), which does not: so
  :meth:`QuietTask.apply_async` hands Celery a dispatcher that publishes
  nothing (Celery's ``event_dispatcher`` publishing option). Beat calls
  ``apply_async`` of the registered task, so its runs are quiet too.

Both are attributes of the task, not settings of the app: a user's app that
``tiercel.init_app`` attached to keeps sending events for its own tasks.
The tasks still run, still return their results (``tiercel stats`` reads the
aggregation's result) and are still counted by the worker's own statistics.
"""

from __future__ import annotations

from typing import Any

from celery import Task

__all__ = ["NO_EVENTS", "QuietTask"]


class _NoEvents:
    """An event dispatcher that publishes nothing (what Celery calls for ``task-sent``)."""

    enabled = False

    def publish(self, *_: Any, **__: Any) -> None:
        """Drop the event."""

    def send(self, *_: Any, **__: Any) -> None:
        """Drop the event."""


#: The dispatcher :class:`QuietTask` sends its ``task-sent`` events to.
NO_EVENTS = _NoEvents()


class QuietTask(Task):  # type: ignore[misc]  # Celery's Task is untyped
    """A task no worker or sender sends monitoring events about (see the module)."""

    send_events = False

    def apply_async(self, *args: Any, **options: Any) -> Any:
        """Celery's ``apply_async``, without the ``task-sent`` event."""
        options.setdefault("event_dispatcher", NO_EVENTS)
        return super().apply_async(*args, **options)
