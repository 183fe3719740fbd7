"""tiercel workers: the Celery app, per-process lifecycle, the launcher and the CLI."""
