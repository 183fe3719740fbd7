"""Cached tasks by name, for the CLI and maintenance tasks."""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

from tiercel.core.errors import TiercelError

_TASKS: dict[str, Any] = {}


class UnknownTask(TiercelError, KeyError):
    """No cached task has that name."""

    def __str__(self) -> str:
        return str(self.args[0])


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
