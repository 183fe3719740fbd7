"""tiercel tasks: the cached-task API and the tasks the fleet runs.

The Celery-facing names load on first use, so the per-process runtime (and
``tiercel.cached``) can be used in a process that never imports Celery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tiercel.tasks.cached import CachedTask, cached_task
    from tiercel.tasks.results import CachedResult

_LAZY: dict[str, str] = {
    "CachedTask": "tiercel.tasks.cached",
    "cached_task": "tiercel.tasks.cached",
    "CachedResult": "tiercel.tasks.results",
}

__all__ = ["CachedResult", "CachedTask", "cached_task"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tiercel.tasks' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
