"""Cached tasks by name, for the CLI and maintenance tasks."""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

from tiercel.core.errors import UnknownTask

__all__ = [
    "UnknownTask",
    "attach",
    "attached_app",
    "attached_app_or_none",
    "find_cached_task",
    "register",
    "task_of",
]

_TASKS: dict[str, Any] = {}
#: The Celery app tiercel was attached to (``tiercel.init_app``); None: Celery's current app.
_app: Any = None


def attach(app: Any) -> None:
    """Bind every cached task, in every thread, to ``app`` (its broker and result backend)."""
    global _app
    _app = app


def attached_app_or_none() -> Any:
    """The app tiercel was attached to, or None when ``init_app`` has not run here."""
    return _app


def attached_app() -> Any:
    """The app cached tasks are bound to: the attached one, else Celery's current app."""
    if _app is not None:
        return _app
    from celery import current_app

    return current_app._get_current_object()


def task_of(name: str) -> Any:
    """The task object called ``name`` on the attached app (what a cached task's name
    stands for in user code, in any thread)."""
    return attached_app().tasks[name]


def register(name: str, task: Any) -> None:
    """Remember a cached task under its Celery name."""
    _TASKS[name] = task


def find_cached_task(name: str) -> Any:
    """The cached task called ``name`` (raises UnknownTask listing the known names)."""
    from tiercel.core.settings import Settings

    for module in Settings.from_env().task_modules:
        importlib.import_module(module)
    if "." in name and name not in _TASKS:
        module_name = name.rsplit(".", 1)[0]
        with contextlib.suppress(ImportError):
            importlib.import_module(module_name)
    try:
        return _TASKS[name]
    except KeyError:
        known = ", ".join(sorted(_TASKS)) or "none"
        raise UnknownTask(f"unknown cached task {name!r}; known: {known}") from None
