"""A cached task's hit path: answered from this process's hot memo, without Celery's proxy.

A cached task's name stands for the task of the attached app
(:mod:`tiercel.tasks.registry`), so user code holds a :class:`CachedTaskProxy`.
Looking an attribute up through Celery's proxy resolves the app and its task
registry on every access; the proxy's own ``cached_call`` and ``submit`` look in
the task's hot memo (:mod:`tiercel.core.cache.hot_memo`) first and reach the
task only when the memo cannot answer.

The memo belongs to this process's runtime: :class:`TaskHotPath` compares the
runtime it was made for with the process's (one identity check), so a forked
child or a restarted runtime makes its own on first use.

Inside a worker the task's body needs its request (a refresh asked for, an
in-flight marker to clear); Celery's own request stack reads a thread-local
through several calls, so cached tasks keep theirs in a :class:`RequestStack`,
a ``threading.local`` whose top is one attribute read.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from celery.local import Proxy

from tiercel.core.cache.hot_memo import HotMemo, call_key
from tiercel.core.cache.memoize import CachedFunction
from tiercel.core.missing import MISSING
from tiercel.tasks import runtime
from tiercel.tasks.registry import task_of
from tiercel.tasks.results import CachedResult

__all__ = ["CachedTaskProxy", "RequestStack", "TaskHotPath"]


class RequestStack(threading.local):
    """A cached task's request stack (what Celery pushes a request on before the body
    runs): ``push``, ``pop``, ``top`` and ``len`` as Celery's, each thread its own.

    ``plain(request)`` says whether a request asks nothing of the body but the value
    (no refresh, no in-flight marker to clear); it is asked once per push, so the
    body reads the answer for the innermost request as :attr:`state`: None (no
    request: called directly), True (a plain request) or False.
    """

    def __init__(self, plain: Callable[[Any], bool]) -> None:
        self._plain = plain
        #: This thread's requests, innermost last.
        self.items: list[Any] = []
        self.state: bool | None = None

    def push(self, request: Any) -> None:
        """Push ``request`` (Celery's tracer does, before the body)."""
        self.items.append(request)
        self.state = self._plain(request)

    def pop(self) -> Any:
        """Pop the innermost request (None when there is none)."""
        items = self.items
        request = items.pop() if items else None
        self.state = self._plain(items[-1]) if items else None
        return request

    @property
    def top(self) -> Any:
        """The innermost request of this thread, or None."""
        items = self.items
        return items[-1] if items else None

    @property
    def stack(self) -> list[Any]:
        """The requests, innermost last (Celery's name for them)."""
        return self.items

    def __len__(self) -> int:
        return len(self.items)


class TaskHotPath:
    """One cached task's hot memo on this process's runtime, made on first use."""

    __slots__ = ("memo", "name", "requests", "spec")

    def __init__(self, spec: CachedFunction[Any, Any], plain: Callable[[Any], bool]) -> None:
        self.spec = spec
        self.name = spec.name
        self.requests = RequestStack(plain)
        #: The memo on the runtime it was made for (``memo.owner``); None before first use.
        self.memo: HotMemo | None = None

    def current(self) -> HotMemo | None:
        """The memo if it belongs to this process's runtime as it is now (never builds)."""
        memo = self.memo
        if memo is not None and memo.owner is runtime.RUNTIME.value:
            return memo
        return None

    def bind(self, rt: runtime.Runtime) -> HotMemo:
        """The memo on ``rt``, made now when the one held belongs to another runtime."""
        memo = self.memo
        if memo is None or memo.owner is not rt:
            memo = self.memo = rt.hot_memo(self.spec)
        return memo

    def call(self, task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``cached_call`` through every tier, remembered when the memory level answered."""
        rt = runtime.current()
        memo = self.bind(rt)
        mark = memo.mark()
        full = task.tiercel_args(args)  # with bind=True the task comes first
        key = rt.counted_key(self.spec, full, kwargs)
        found = rt.call(self.spec, full, kwargs, key=key)
        memo.install(call_key(args, kwargs), key, found, mark, rt.hot_lifetime(self.spec, found))
        return found.value

    def resolved(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CachedResult | None:
        """``submit``'s answer from the memo (counted), or None."""
        memo = self.memo
        if memo is None or memo.owner is not runtime.RUNTIME.value:
            return None
        found = memo.entry(args, kwargs)
        if found is None:
            return None
        return CachedResult.resolved(found[2], found[0], "memory", self.spec)


class CachedTaskProxy(Proxy):  # type: ignore[misc]
    """The object a ``@cached_task`` name holds: Celery's proxy to the attached app's
    task, whose ``cached_call`` and ``submit`` answer from the hot memo first."""

    __slots__ = ("tiercel_hot",)
    tiercel_hot: TaskHotPath

    def __init__(self, name: str, hot: TaskHotPath) -> None:
        super().__init__(functools.partial(task_of, name))
        object.__setattr__(self, "tiercel_hot", hot)

    def cached_call(self, *args: Any, **kwargs: Any) -> Any:
        """Compute in this process through local levels, the Redis tier and the lease."""
        hot = self.tiercel_hot
        memo = hot.memo
        if memo is not None and memo.owner is runtime.RUNTIME.value:
            value = memo.answer(args, kwargs)
            if value is not MISSING:
                return value
        return self._get_current_object().cached_call(*args, **kwargs)

    def submit(self, *args: Any, **kwargs: Any) -> CachedResult:
        """Answer from the cache when possible; else join or enqueue (see CachedTask)."""
        found = self.tiercel_hot.resolved(args, kwargs)
        if found is not None:
            return found
        result: CachedResult = self._get_current_object().submit(*args, **kwargs)
        return result
