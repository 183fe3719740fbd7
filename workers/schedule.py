"""The beat schedule: tiercel's periodic maintenance and aggregation tasks.

Exactly one beat runs per deployment (``tiercel up`` starts one; workers never
run ``-B``: every node would then schedule every task). Each entry's
``expires`` equals its period: a run that waited in the queue longer than
that (workers busy or down) is discarded instead of piling up behind the
next one, and each task also takes an overlap lock (:mod:`tiercel.tasks.maintenance`).
"""

from __future__ import annotations

from typing import Any

from tiercel.core.settings import Settings


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Celery's ``beat_schedule`` for ``settings`` (periods from the TIERCEL_* intervals)."""

    def entry(task: str, every: float) -> dict[str, Any]:
        return {"task": task, "schedule": every, "options": {"expires": every}}

    return {
        # Publishes one message that every worker process (prefork children too) obeys.
        "tiercel-sweep": entry("tiercel.maintenance.sweep", settings.sweep_interval),
        "tiercel-housekeeping": entry(
            "tiercel.maintenance.housekeeping", settings.housekeeping_interval
        ),
        "tiercel-aggregate": entry("tiercel.metrics.aggregate", settings.aggregate_interval),
    }
