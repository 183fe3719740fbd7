"""CachedResult: the handle ``submit()`` returns, resolved or pending."""

from __future__ import annotations

from typing import Any

from celery.result import AsyncResult

#: Where an answer came from.
SOURCES = ("memory", "redis", "computed", "joined")

_UNSET: Any = object()


class CachedResult:
    """The answer to one submitted call.

    Resolved at once when a cache tier had the value (``source`` is
    ``memory`` or ``redis`` and ``task_id`` is None); otherwise a handle to
    the Celery task computing it (``computed``) or to another submitter's
    task for the same key (``joined``).
    """

    __slots__ = ("_async", "_value", "key", "source")

    def __init__(self, *, key: str, source: str, value: Any = _UNSET,
                 async_result: AsyncResult | None = None) -> None:
        if (value is _UNSET) == (async_result is None):
            raise ValueError("a CachedResult has either a value or an async result")
        self.key = key
        self.source = source
        self._value = value
        self._async = async_result

    @classmethod
    def resolved(cls, key: str, value: Any, source: str) -> CachedResult:
        """A result answered from a cache tier."""
        return cls(key=key, source=source, value=value)

    @classmethod
    def pending(cls, key: str, async_result: AsyncResult, source: str) -> CachedResult:
        """A result a Celery task will provide."""
        return cls(key=key, source=source, async_result=async_result)

    @property
    def task_id(self) -> str | None:
        """The Celery task id when a task was enqueued (or joined), else None."""
        return self._async.id if self._async is not None else None

    def ready(self) -> bool:
        """True when the value is available."""
        return self._async is None or self._async.ready()

    def get(self, timeout: float | None = None) -> Any:
        """The value; waits up to ``timeout`` seconds for a pending task (re-raises its error)."""
        if self._async is None:
            return self._value
        value = self._async.get(timeout=timeout)
        return value

    def __repr__(self) -> str:
        state = "ready" if self.ready() else "pending"
        return f"<CachedResult {self.source} {state} key={self.key}>"
