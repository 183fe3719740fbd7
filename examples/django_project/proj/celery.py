"""The project's Celery app, as Celery's Django guide writes it, with tiercel attached."""

import os

from celery import Celery

import tiercel

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")
# Every Celery setting lives in Django's settings, prefixed CELERY_.
app.config_from_object("django.conf:settings", namespace="CELERY")
# The cache tier shares the Redis result backend; tiercel's own settings could
# come from Django's settings too: tiercel.init_app(app, namespace=settings.X).
tiercel.init_app(app)
# Finds core/tasks.py (and every other installed app's tasks module).
app.autodiscover_tasks()
