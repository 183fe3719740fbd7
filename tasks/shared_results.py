"""One Celery ``AsyncResult`` per task id in a process, shared by every handle joining it.

200 submits of a cold key join one task: 200 handles. Each holding an
``AsyncResult`` of its own would cost 200 of them, and Celery's
``AsyncResult.__del__`` asks the result backend to forget its pending result
(a lock, key building, an unsubscribe queued) once per object, as each handle
is dropped: on an event loop, after every answer, before the next caller is
resumed. Sharing one per task id, the backend hears of it once.

Bounded: an entry lives while some handle holds its result (a weak mapping).
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a plain process (tiercel.cached, no Celery) never imports Celery
    from celery.result import AsyncResult

__all__ = ["SharedResults"]


class SharedResults:
    """The ``AsyncResult`` of each task id some handle of this process holds."""

    __slots__ = ("_by_id", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_id: weakref.WeakValueDictionary[str, AsyncResult] = weakref.WeakValueDictionary()

    def of(self, task_id: str, app: Any) -> AsyncResult:
        """The result of ``task_id`` on ``app``: the one already held, else a new one."""
        from celery.result import AsyncResult

        with self._lock:
            found = self._by_id.get(task_id)
            if found is None or found.app is not app:
                found = self._by_id[task_id] = AsyncResult(task_id, app=app)
            return found

    def remember(self, result: AsyncResult) -> AsyncResult:
        """Share ``result`` (a task just published here) with later joiners; returns the
        shared one (a joiner's, if one joined before the publish returned)."""
        with self._lock:
            shared: AsyncResult = self._by_id.setdefault(result.id, result)
        return shared

    def __len__(self) -> int:
        return len(self._by_id)
