"""Flower sees where each cached task's answer came from.

After a cached task succeeds, the worker sends a ``task-tiercel-<source>``
event (``redis``, ``memory``, ``computed``, ...). Flower counts it in
``flower_events_total{type="task-tiercel-redis", task=...}`` and keeps its
fields (``source``, ``seconds_saved``) with the task.
"""

from __future__ import annotations

import logging
from typing import Any

from tiercel.tasks.recorder import CallRecorder

log = logging.getLogger("tiercel.maintenance")


def announce_source(
    recorder: CallRecorder, task: Any, task_id: str | None, state: str | None
) -> None:
    """Send the source event of the call ``task`` just made in this thread, if any."""
    last = recorder.last()
    if last is None or state != "SUCCESS" or not task_id or last[0] != task.name:
        return
    if not task.app.conf.worker_send_task_events:
        return
    _, source, saved = last
    try:
        task.send_event(
            f"task-tiercel-{source}", retry=False, source=source, seconds_saved=round(saved, 6)
        )
    except Exception:  # an event is a nicety: never fail the task for it
        log.debug("sending the source event failed", exc_info=True)
