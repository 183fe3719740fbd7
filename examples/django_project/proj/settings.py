"""Django settings: the few a Celery project needs (no database, no HTTP)."""

import os

# Django refuses to start without one; a real project reads it from its secret store.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only")
DEBUG = False
ALLOWED_HOSTS: list[str] = []
INSTALLED_APPS = ["core"]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

CELERY_BROKER_URL = os.environ.get("PROJECT_REDIS", "redis://localhost:6379/0")
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("PROJECT_QUEUE", "celery")
CELERY_WORKER_PREFETCH_MULTIPLIER = 2
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 7200}
