"""One value per process, built after fork in the process that uses it.

Every per-process resource of tiercel (the runtime with its levels, sockets
and threads; the worker main process's lease client; the result-backend
client of periodic tasks) is held in a :class:`ProcessLocal`. A forked child
(a prefork worker child, a recycled one) never uses or closes its parent's
value: one ``os.register_at_fork`` hook, here, forgets them all in the child,
which builds its own on first use.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ProcessLocal(Generic[T]):
    """A value built on first use per process; ``close`` releases it at :meth:`clear`."""

    def __init__(self, build: Callable[[], T], close: Callable[[T], None] | None = None) -> None:
        self._build = build
        self._close = close
        self._lock = threading.Lock()
        #: This process's value, or None before it is built (and in a forked child, whose
        #: parent's value the fork hook forgets). Read it where a call costs too much;
        #: :meth:`get` also checks the process id.
        self.value: T | None = None
        self._pid = 0
        _instances.add(self)

    def get(self) -> T:
        """This process's value, built now if it has none."""
        value = self.value
        if value is not None and self._pid == os.getpid():
            return value
        with self._lock:
            if self.value is None or self._pid != os.getpid():
                self.value, self._pid = self._build(), os.getpid()
            return self.value

    def peek(self) -> T | None:
        """This process's value if it was built, else None (never builds one)."""
        value = self.value
        return value if value is not None and self._pid == os.getpid() else None

    def replace(self, value: T) -> T:
        """Make ``value`` this process's, closing the one it replaces."""
        with self._lock:
            old = self.peek()
            self.value, self._pid = value, os.getpid()
        if old is not None and old is not value and self._close is not None:
            self._close(old)
        return value

    def clear(self) -> None:
        """Close and forget this process's value, if any."""
        with self._lock:
            old = self.peek()
            self.value = None
        if old is not None and self._close is not None:
            self._close(old)

    def _forget(self) -> None:
        # In a forked child: the parent's value holds the parent's sockets and threads.
        self.value = None
        self._lock = threading.Lock()


_instances: weakref.WeakSet[ProcessLocal[Any]] = weakref.WeakSet()


def _forget_all_after_fork() -> None:
    for holder in list(_instances):
        holder._forget()


os.register_at_fork(after_in_child=_forget_all_after_fork)
