"""Caching a computation's failure, when a function asks for it (negative caching).

A function may list exception types whose failures are worth remembering
for a short while (``cache_errors=(NotFound,)``, ``error_ttl=30``): a lookup
that keeps failing the same way then costs one computation per
``error_ttl``, not one per request. The failure is stored as plain data (a
marker dict, encodable by the safe codec) and raised again on a hit, as the
same type: the type is found in the function's own allow-list by name, so
nothing is imported or constructed from what Redis holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from tiercel.core.errors import ComputationFailed

#: The key of the marker dict; a value that is such a dict is a cached failure.
MARKER = "__tiercel_failure__"


def type_name(kind: type[BaseException]) -> str:
    """``module.QualName`` of an exception type."""
    return f"{kind.__module__}.{kind.__qualname__}"


def record(
    error: BaseException, ttl: float, wall_clock: Callable[[], float] = time.time
) -> dict[str, Any]:
    """The marker stored in place of a value: the error's type, message and expiry."""
    return {
        MARKER: {
            "type": type_name(type(error)),
            "message": str(error)[:2000],
            "until": wall_clock() + ttl,
        }
    }


def is_failure(value: Any) -> bool:
    """True when ``value`` is a cached failure marker."""
    return type(value) is dict and len(value) == 1 and MARKER in value


def expired(value: dict[str, Any], wall_clock: Callable[[], float] = time.time) -> bool:
    """True when the cached failure has outlived its ``error_ttl``."""
    until = value[MARKER].get("until")
    return not isinstance(until, (int, float)) or wall_clock() >= until


def raise_failure(value: dict[str, Any], allowed: Sequence[type[BaseException]], key: str) -> None:
    """Raise the cached failure as its own type when that type is allowed, else as
    :class:`~tiercel.core.errors.ComputationFailed`."""
    detail = value[MARKER]
    name, message = str(detail.get("type", "")), str(detail.get("message", ""))
    for kind in allowed:
        if type_name(kind) == name:
            try:
                error = kind(message)
            except Exception:  # a type that takes other arguments: report it generically
                break
            raise error
    raise ComputationFailed(key, name, message)
