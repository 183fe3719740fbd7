"""Cached tasks by name, for the CLI and maintenance tasks."""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

from tiercel.core.errors import UnknownTask

__all__ = ["UnknownTask", "find_cached_task", "register"]

_TASKS: dict[str, Any] = {}


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
