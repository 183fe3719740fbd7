"""The Celery app: ``celery -A tiercel.workers.app worker|beat|inspect`` works as expected.

Settings come from ``TIERCEL_*`` variables, or from the embedded fleet that
``tiercel up`` runs. It is attached by the same :func:`tiercel.init_app` a
project's own app uses; being tiercel's own app, it also takes tiercel's whole
Celery configuration (:mod:`tiercel.workers.config`) and is the default app in
every thread.
"""

from __future__ import annotations

from celery import Celery

from tiercel.core.settings import resolve_settings
from tiercel.workers import broker_guard
from tiercel.workers.config import celery_config
from tiercel.workers.init_app import init_app

#: Modules whose tasks every worker registers: tiercel's maintenance and metrics tasks.
#: Example tasks are opt-in (TIERCEL_TASK_MODULES=tiercel.tasks.examples).
TASK_MODULES = ["tiercel.tasks.maintenance"]

settings = resolve_settings()
broker_guard.apply()  # a broker restart must not kill workers (see the module)

# The deployment's own task modules (TIERCEL_TASK_MODULES) after tiercel's.
app = Celery("tiercel", include=[*TASK_MODULES, *settings.task_modules])
app.conf.update(celery_config(settings))
# Cached tasks bound to this app, maintenance tasks and their beat entries, the lifecycle.
init_app(app, settings=settings)
# The default app in every thread for tiercel's own plain tasks too (the examples): a
# project's app attached with init_app is never made the default.
app.set_default()

__all__ = ["app", "settings"]
