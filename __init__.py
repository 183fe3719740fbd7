"""tiercel: cached compute on Celery.

Each distinct (function, version, arguments) computes once across a fleet of
Celery workers; later calls are answered from the nearest cache tier.

``import tiercel`` loads no Celery: names are imported on first use, and
``tiercel.cached`` (a cached function in any process) never imports Celery,
so a plain Python process pays nothing for it (an ``async def`` is awaited;
``await tiercel.aclose()`` closes the running event loop's client). ``cached_task``,
``CachedTask`` and ``CachedResult`` are the Celery-facing API;
``invalidate_namespace()`` forgets every cached value of the deployment.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tiercel.core.errors import (
    CacheError,
    ChannelSilent,
    CodecError,
    ComputationFailed,
    ForeignResource,
    KeyEncodingError,
    LeaseError,
    LeaseLost,
    NodeSilent,
    PoolClosed,
    PoolError,
    PoolTimeout,
    ServerError,
    SettingsError,
    TiercelError,
    TierUnavailable,
    UnknownTask,
    ValueTooLarge,
)
from tiercel.core.settings import Settings

if TYPE_CHECKING:
    from tiercel.tasks.async_runtime import close as aclose
    from tiercel.tasks.cached import CachedTask, cached_task
    from tiercel.tasks.cached_function import cached
    from tiercel.tasks.results import CachedResult
    from tiercel.tasks.runtime import invalidate_namespace, monitor
    from tiercel.workers.init_app import init_app

__version__ = "0.1.0"

#: Names loaded on first use, by the module that defines them (these import Celery).
_LAZY: dict[str, str] = {
    "cached": "tiercel.tasks.cached_function",
    "cached_task": "tiercel.tasks.cached",
    "CachedTask": "tiercel.tasks.cached",
    "CachedResult": "tiercel.tasks.results",
    "invalidate_namespace": "tiercel.tasks.runtime",
    "monitor": "tiercel.tasks.runtime",
    "init_app": "tiercel.workers.init_app",
    "aclose": "tiercel.tasks.async_runtime",
}

#: Names the face gives a definition another name in its module.
_RENAMED: dict[str, str] = {"aclose": "close"}

__all__ = [
    "CacheError",
    "CachedResult",
    "CachedTask",
    "ChannelSilent",
    "CodecError",
    "ComputationFailed",
    "ForeignResource",
    "KeyEncodingError",
    "LeaseError",
    "LeaseLost",
    "NodeSilent",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "ServerError",
    "Settings",
    "SettingsError",
    "TierUnavailable",
    "TiercelError",
    "UnknownTask",
    "ValueTooLarge",
    "aclose",
    "cached",
    "cached_task",
    "init_app",
    "invalidate_namespace",
    "monitor",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tiercel' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
