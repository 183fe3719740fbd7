"""The Celery app: ``celery -A tiercel.workers.app worker|beat|inspect`` works as expected.

Settings come from ``TIERCEL_*`` variables, or from the embedded fleet that
``tiercel up`` runs. The per-process lifecycle (levels, pools, subscriber
built after fork) is wired in :mod:`tiercel.workers.signals`.
"""

from __future__ import annotations

from celery import Celery

from tiercel.core.settings import resolve_settings
from tiercel.workers import broker_guard
from tiercel.workers.config import celery_config
from tiercel.workers.schedule import beat_schedule

#: Modules whose tasks every worker registers: tiercel's maintenance and metrics tasks.
#: Example tasks are opt-in (TIERCEL_TASK_MODULES=tiercel.tasks.examples).
TASK_MODULES = ["tiercel.tasks.maintenance"]

settings = resolve_settings()
broker_guard.apply()  # a broker restart must not kill workers (see the module)

# The deployment's own task modules (TIERCEL_TASK_MODULES) after tiercel's.
app = Celery("tiercel", include=[*TASK_MODULES, *settings.task_modules])
app.conf.update(celery_config(settings))
# Maintenance and fleet aggregation; only the one beat process reads it (workers/schedule.py).
app.conf.beat_schedule = beat_schedule(settings)
# The default app in every thread (Celery's current app is thread-local otherwise), so
# cached tasks submitted from a thread pool find this app's broker and result backend.
app.set_default()

import tiercel.workers.signals  # noqa: E402,F401  (connects the lifecycle handlers)

__all__ = ["app", "settings"]
