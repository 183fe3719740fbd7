"""Flower sees where each cached task's answer came from.

After a cached task succeeds, the worker sends a ``task-tiercel-<source>``
event (``redis``, ``memory``, ``computed``, ...). Flower counts it in
``flower_events_total{type="task-tiercel-redis", task=...}`` and merges its
fields into the task it keeps: ``tiercel_tier`` (the source),
``tiercel_seconds_saved`` and ``tiercel_key`` (the cache key of the call).
Flower's task page renders only Celery's own task fields; the formatter in
:mod:`tiercel.workers.flower_view` adds these three rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

from tiercel.tasks.event_sender import EventSender, PendingEvent
from tiercel.tasks.recorder import CallRecorder

__all__ = ["EVENT_PREFIX", "FIELDS", "announce_source"]

log = logging.getLogger("tiercel.maintenance")

#: The event type is this prefix and the source.
EVENT_PREFIX: Final = "task-tiercel-"
#: The event's fields, as Flower keeps them on the task.
FIELDS: Final = ("tiercel_tier", "tiercel_seconds_saved", "tiercel_key")


def announce_source(
    recorder: CallRecorder,
    sender: EventSender,
    task: Any,
    task_id: str | None,
    state: str | None,
    key: Callable[[], str] | None = None,
    memo_source: str | None = None,
) -> None:
    """Send the source event of the call ``task`` just made in this thread, if any,
    through ``sender`` (published from its own thread: the next task does not wait).

    ``key`` derives the call's cache key; it is called only when an event is sent.
    ``memo_source`` is the level the task's hot memo stands for: a cached task whose
    body told the recorder nothing was answered by the memo (every other way through
    the body records its call), so the event names that level.
    """
    last = recorder.last()
    if last is None and memo_source is not None:
        last = recorder.local_answer(task.name, memo_source)
    if last is None or state != "SUCCESS" or not task_id or last[0] != task.name:
        return
    if not task.app.conf.worker_send_task_events or not getattr(task, "send_events", True):
        return
    _, source, saved = last
    try:
        tier, seconds, cache_key = FIELDS
        fields: dict[str, Any] = {tier: source, seconds: round(saved, 6)}
        if key is not None:
            fields[cache_key] = key()
        hostname = getattr(task.request, "hostname", None)
        sender.send(PendingEvent(task.app, hostname, task_id, f"{EVENT_PREFIX}{source}", fields))
    except Exception:  # an event is a nicety: never fail the task for it
        log.debug("sending the source event failed", exc_info=True)
