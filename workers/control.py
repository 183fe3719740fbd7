"""Talking to running worker nodes without importing the worker app."""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

from tiercel.core.settings import Settings
from tiercel.workers.config import celery_config


def control_app(settings: Settings) -> Celery:
    """A Celery app with the fleet's configuration and no tasks (for control and results)."""
    app = Celery("tiercel-control", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


def ping_nodes(settings: Settings, nodes: Sequence[str], timeout: float = 1.0) -> set[str]:
    """The subset of ``nodes`` that answered a ping within ``timeout`` seconds."""
    app = control_app(settings)
    try:
        replies = app.control.ping(destination=list(nodes), timeout=timeout) or []
    finally:
        app.close()
    answered: set[str] = set()
    for reply in replies:
        answered.update(reply)
    return answered
