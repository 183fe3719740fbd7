"""CachedResult: the handle ``submit()`` returns, resolved or pending."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult

from tiercel.core.cache.failures import is_failure, raise_failure
from tiercel.core.cache.freshness import STALE
from tiercel.core.missing import MISSING

log = logging.getLogger("tiercel.results")

#: Where an answer came from.
SOURCES = ("memory", "redis", "computed", "joined")


class CachedResult:
    """The answer to one submitted call.

    Resolved at once when a cache tier had the value (``source`` is
    ``memory`` or ``redis`` and ``task_id`` is None); otherwise a handle to
    the Celery task computing it (``computed``) or to another submitter's
    task for the same key (``joined``).
    """

    __slots__ = (
        "_async",
        "_cache",
        "_republish_after",
        "_resubmit",
        "_runtime",
        "_spec",
        "_value",
        "key",
        "source",
    )

    def __init__(
        self,
        *,
        key: str,
        source: str,
        value: Any = MISSING,
        async_result: AsyncResult | None = None,
        runtime: Any = None,
        cache: Any = None,
        spec: Any = None,
        resubmit: Callable[[], Any] | None = None,
        republish_after: float | None = None,
    ) -> None:
        if (value is MISSING) == (async_result is None):
            raise ValueError("a CachedResult has either a value or an async result")
        self.key = key
        self.source = source
        self._value = value
        self._async = async_result
        self._runtime = runtime
        self._cache = cache
        #: The task's CachedFunction: its freshness policy and cached failure types.
        self._spec = spec
        #: Publishes the same task (same id) again, should its message have been lost.
        self._resubmit = resubmit
        self._republish_after = republish_after

    @classmethod
    def resolved(cls, key: str, value: Any, source: str, spec: Any = None) -> CachedResult:
        """A result answered from a cache tier (a cached failure raises on get())."""
        # Built field by field: this is every hit's result, and __init__'s checks and
        # keyword handling cost as much as the lookup itself.
        result = cls.__new__(cls)
        result.key = key
        result.source = source
        result._value = value
        result._async = None
        result._runtime = None
        result._cache = None
        result._spec = spec
        result._resubmit = None
        result._republish_after = None
        return result

    @classmethod
    def pending(
        cls,
        key: str,
        async_result: AsyncResult,
        source: str,
        runtime: Any = None,
        cache: Any = None,
        spec: Any = None,
        resubmit: Callable[[], Any] | None = None,
        *,
        republish_after: float | None = None,
    ) -> CachedResult:
        """A result a Celery task will provide; with the process's ``runtime`` it is
        read from the cache the moment the value is written (see :meth:`get`).
        ``republish_after`` overrides the setting (a delayed task is pending longer)."""
        return cls(
            key=key,
            source=source,
            async_result=async_result,
            runtime=runtime,
            cache=cache,
            spec=spec,
            resubmit=resubmit,
            republish_after=republish_after,
        )

    @property
    def task_id(self) -> str | None:
        """The Celery task id when a task was enqueued (or joined), else None."""
        return self._async.id if self._async is not None else None

    def ready(self) -> bool:
        """True when the value is available."""
        return self._value is not MISSING or self._async is None or self._async.ready()

    def get(self, timeout: float | None = None) -> Any:
        """The value; waits up to ``timeout`` seconds for a pending task (re-raises its error).

        A pending result waits on the process's invalidation channel and reads
        the value from the cache as soon as the computation writes it; the
        Celery result backend answers when there is nothing to read (the task
        failed, its value was too large to cache, or the channel is down).
        Threads of this process waiting for the same task share one wait
        (:mod:`tiercel.core.cache.thread_shared_waits`): one listens and reads,
        the others take its value.
        """
        if self._value is not MISSING:
            return self._settled(self._value)
        assert self._async is not None
        runtime = self._runtime
        if runtime is None or not runtime.notifier.connected:
            return self._from_backend(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        value = runtime.waits.wait((self.key, self._async.id), timeout, self._cached_value)
        if value is MISSING:  # the result backend answers: failed, uncached, or no channel
            return self._from_backend(_left(deadline))
        self._value = value
        return self._settled(value)

    def _cached_value(self, timeout: float | None) -> Any:
        """Wait up to ``timeout`` seconds until the cache holds a usable value (returned),
        or until the result backend must answer (MISSING); raises TimeoutError."""
        assert self._async is not None
        runtime = self._runtime
        deadline = None if timeout is None else time.monotonic() + timeout
        after = (
            runtime.settings.republish_after
            if self._republish_after is None
            else self._republish_after
        )
        next_check = time.monotonic() + after
        cache = self._cache or runtime.cache

        def read() -> Any:
            return cache.lookup(self.key)

        with runtime.notifier.waiter(self.key) as waiter:
            while True:
                if not runtime.notifier.connected:
                    return MISSING  # no notifications while the channel is down
                # Shared with this process's other waiters of the key, when issued after
                # this one's last wake-up (tiercel.core.cache.thread_shared_reads): a read
                # begun before the write never answers a waiter woken by it.
                found = runtime.reads.read(self.key, waiter.since, runtime.notifier.epoch, read)
                if found is not None and self._usable(found):
                    return found.value
                if self._async.ready():
                    return MISSING
                if self._resubmit is not None and after > 0 and time.monotonic() >= next_check:
                    next_check = time.monotonic() + after
                    self._republish_if_lost(runtime, after)
                left = _left(deadline)
                if left is not None and left <= 0:
                    raise CeleryTimeoutError("The operation timed out.")
                # A slice, not a poll: every outcome (written, failed, invalidated,
                # reconnected) wakes the waiter at once; the slice only bounds how
                # long a lost message could delay the backend check (one GET a second).
                if waiter.wait(1.0 if left is None else min(left, 1.0)) == "f":
                    return MISSING

    async def aget(self, timeout: float | None = None) -> Any:
        """:meth:`get` for asyncio code: the same wait on the loop's listener instead of a
        blocked thread, the same policy checks, re-publishing and ``TimeoutError``.

        The Celery result backend's client is blocking: its checks run in a worker
        thread, once per wake-up or one-second slice, as the blocking wait makes them.
        """
        import asyncio

        from tiercel.tasks import async_runtime

        if self._value is not MISSING:
            return self._settled(self._value)
        pending = self._async
        assert pending is not None  # a result without a value is a pending one
        runtime = self._runtime
        if runtime is None:
            return await asyncio.to_thread(self._from_backend, timeout)
        loop = await async_runtime.current()
        listener = loop.listener
        if not listener.connected:
            return await asyncio.to_thread(self._from_backend, timeout)
        if timeout is not None and timeout <= 0:
            # Not waiting at all: one read answers, as the blocking get's first look.
            spec = self._spec
            cache = loop.cache.with_levels(spec.levels if spec is not None else None)
            found = await cache.lookup(self.key)
            if found is not None and self._usable(found):
                self._value = found.value
                return self._settled(self._value)
            raise CeleryTimeoutError("The operation timed out.")
        deadline = None if timeout is None else time.monotonic() + timeout
        # One wait per pending computation and loop, shared by every awaiter of it
        # (tiercel.core.cache.async_shared_waits): the write wakes one waiter, not 200.
        try:
            found = await loop.waits.wait(
                (self.key, pending.id), lambda: self._await_value(loop, runtime), timeout
            )
        except TimeoutError:
            raise CeleryTimeoutError("The operation timed out.") from None
        if found is MISSING:  # the result backend answers: failed, uncached, or no channel
            return await asyncio.to_thread(self._from_backend, _left(deadline))
        self._value = found
        return self._settled(found)

    async def _await_value(self, loop: Any, runtime: Any) -> Any:
        """Wait (with no deadline: each awaiter has its own) until the cache holds a
        usable value (returned), or until the result backend must answer (MISSING).

        The same checks as the blocking wait: woken by the channel, the backend
        asked once per wake-up or one-second slice, a lost message re-published.
        """
        import asyncio

        pending = self._async
        assert pending is not None
        listener = loop.listener
        spec = self._spec
        cache = loop.cache.with_levels(spec.levels if spec is not None else None)
        after = (
            runtime.settings.republish_after
            if self._republish_after is None
            else self._republish_after
        )
        next_check = time.monotonic() + after
        with listener.waiter(self.key) as waiter:
            while True:
                if not listener.connected:
                    return MISSING  # no notifications while the channel is down
                # Shared with this loop's other reads of the key, when issued after
                # this wait's last wake-up (see tiercel.core.cache.async_shared_reads).
                found = await loop.reads.read(
                    self.key, waiter.since, listener.epoch, lambda: cache.lookup(self.key)
                )
                if found is not None and self._usable(found):
                    return found.value
                if await asyncio.to_thread(pending.ready):
                    return MISSING
                if self._resubmit is not None and after > 0 and time.monotonic() >= next_check:
                    next_check = time.monotonic() + after
                    await asyncio.to_thread(self._republish_if_lost, runtime, after)
                # A slice, not a poll: every outcome wakes the waiter at once.
                if await waiter.wait(1.0) == "f":
                    return MISSING

    def __await__(self) -> Any:
        """``await result`` is ``await result.aget()`` (no timeout)."""
        return self.aget().__await__()

    def _republish_if_lost(self, runtime: Any, period: float) -> None:
        """Publish the task again if it never started and nobody computes its key.

        A task still PENDING after ``period`` seconds is queued behind others, or
        its message was lost (a Redis broker can drop a message it was handing
        out when it stopped). Cached tasks are idempotent and computed once per
        key under a lease, so a duplicate message costs a queue slot, while a
        lost one would cost every waiter its answer. One client per key per
        period re-publishes, and none while a computation holds the lease.
        """
        assert self._async is not None and self._resubmit is not None
        try:
            if self._async.state != "PENDING":
                return  # started somewhere: redelivery covers a worker that died
            if not runtime.leases.claim_republish(self.key, period):
                return
            self._resubmit()
        except Exception:  # a check that fails must not fail the wait
            log.warning("tiercel: could not re-publish task %s", self._async.id, exc_info=True)
            return
        log.warning(
            "tiercel: task %s made no progress for %.0fs: re-published it (same id)",
            self._async.id,
            period,
        )

    def _from_backend(self, timeout: float | None) -> Any:
        """The task's outcome from the Celery result backend (its value, or its error)."""
        assert self._async is not None
        try:
            return self._async.get(timeout=timeout)
        except CeleryTimeoutError:
            raise
        except Exception:
            # Failed or revoked: this process's later submits of the key must not join it.
            if self._runtime is not None:
                self._runtime.joins.forget(self.key, self._async.id)
            raise

    def _usable(self, found: Any) -> bool:
        """May a pending result answer with this cached value? Not when its policy calls it
        stale, nor when it is a cached failure past its error_ttl: the task computing a
        newer answer is what this result waits for."""
        spec = self._spec
        if spec is None:
            return True
        if spec.expired_failure(found.value):
            return False
        return bool(spec.policy.judge(found.ttl, found.compute_seconds) != STALE)

    def _settled(self, value: Any) -> Any:
        spec = self._spec
        if spec is not None and spec.cache_errors and is_failure(value):
            raise_failure(value, spec.cache_errors, self.key)
        return value

    def __repr__(self) -> str:
        state = "ready" if self.ready() else "pending"
        return f"<CachedResult {self.source} {state} key={self.key}>"


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())
