"""Waiting without polling in an event loop: one pub/sub subscription per loop.

:class:`AsyncListener` subscribes one ``redis.asyncio`` connection to the
namespace's channel and serves it with one task, waking the
:class:`AsyncWaiter` registered for a key when its ``d|``, ``f|`` or ``i|``
message arrives (decoded by :mod:`tiercel.core.tier.events`). It only wakes
waiters: evicting this process's local levels stays the job of the process's
own :class:`~tiercel.core.tier.notifier.Notifier`, which hears the same
messages.

It also times delivery probes (``p|<sent>``,
:class:`~tiercel.core.tier.events.ChannelProbe`): ``on_delivery`` gets
``max(0, time.time() - sent)``, the delay a message published at ``sent`` met
on this loop's subscription before it could wake a waiter (the sender's and
this host's clocks both enter it). The process's runtime records it in the
same process metrics as its notifier's, under its own label.

As with the blocking notifier, a waiter registers *before* re-reading the
value (no lost wake-up), and every answer of :meth:`AsyncWaiter.wait` means
"re-check the value and the lease": ``"d"``, ``"f"``, ``"i"``, ``"r"`` (the
subscription was lost or renewed: messages may have been missed) or None on
timeout. While not subscribed, a wait lasts at most :data:`UNSUBSCRIBED_POLL`
seconds, so a caller degrades to slow polling rather than hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final

import redis.asyncio as aioredis

from tiercel.core.tier import events

__all__ = ["UNSUBSCRIBED_POLL", "WAKE_RESET", "AsyncListener", "AsyncWaiter"]

log = logging.getLogger("tiercel.notifier")

#: Why a wait ended without its key's message: the subscription was lost or renewed.
WAKE_RESET: Final = "r"
#: The longest wait while the listener is not subscribed.
UNSUBSCRIBED_POLL: Final = 0.1
#: How long one read of the subscription blocks before checking for a stop.
_READ_TIMEOUT: Final = 1.0
_BACKOFF_MIN: Final = 0.05
_BACKOFF_MAX: Final = 2.0


class AsyncWaiter:
    """A registration for ``key``'s wake-ups; use it as a context manager.

    ``since`` is the listener's :attr:`~AsyncListener.epoch` when it registered or was
    last woken: a read started at that epoch or later saw everything it was woken for.
    """

    __slots__ = ("_future", "_kind", "_listener", "key", "since")

    def __init__(self, listener: AsyncListener, key: str) -> None:
        self._listener = listener
        self.key = key
        #: What woke it since its last wait (None: nothing yet).
        self._kind: str | None = None
        #: The future a wait in progress awaits: one future and, with a timeout, one
        #: timer per wait, so 200 waiters woken at once cost 200 task steps, no more.
        self._future: asyncio.Future[None] | None = None
        self.since = listener.epoch

    def _wake(self, kind: str) -> None:
        if self._kind is None:
            self._kind = kind
        self.since = self._listener.epoch
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)

    async def wait(self, timeout: float | None) -> str | None:
        """Wait for a wake-up (its kind) or ``timeout`` seconds (None)."""
        if not self._listener.connected:
            timeout = UNSUBSCRIBED_POLL if timeout is None else min(timeout, UNSUBSCRIBED_POLL)
        if self._kind is None:
            loop = asyncio.get_running_loop()
            future = self._future = loop.create_future()
            timer = None if timeout is None else loop.call_later(timeout, _expire, future)
            try:
                await future
            finally:
                self._future = None
                if timer is not None:
                    timer.cancel()
        kind, self._kind = self._kind, None
        return kind

    def __enter__(self) -> AsyncWaiter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._listener._deregister(self)


def _expire(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AsyncListener:
    """One subscription to ``channel`` on ``client``, served by one task of this loop."""

    def __init__(
        self,
        client: aioredis.Redis,
        channel: str,
        *,
        on_delivery: Callable[[float], object] | None = None,
    ) -> None:
        self.client = client
        self.channel = channel
        #: Called with a delivery probe's delay in seconds; keep it quick. An exception
        #: in it is logged and counted (``handler_errors``), never fatal.
        self.on_delivery = on_delivery
        self.handler_errors = 0
        self._waiters: dict[str, set[AsyncWaiter]] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._confirmations = 0
        #: Whether the subscription is up right now.
        self.connected = False
        #: Subscriptions renewed after a loss.
        self.reconnects = 0
        #: Messages received; messages that decoded to nothing known.
        self.received = 0
        self.malformed = 0
        #: Counts every message and (re)subscription, before the waiters it wakes.
        self.epoch = 0

    async def start(self, timeout: float = 1.0) -> bool:
        """Start the listening task; True once subscribed within ``timeout`` seconds
        (otherwise it keeps trying in the background)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), timeout)
        return self.connected

    async def stop(self) -> None:
        """Stop listening and wake every waiter."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.connected = False
        self.epoch += 1
        self._wake_all(WAKE_RESET)

    def waiter(self, key: str) -> AsyncWaiter:
        """Register for ``key``'s next wake-up (deregistered when the ``with`` ends)."""
        waiter = AsyncWaiter(self, key)
        self._waiters.setdefault(key, set()).add(waiter)
        return waiter

    @property
    def waiting(self) -> int:
        """Waiters registered right now."""
        return sum(len(group) for group in self._waiters.values())

    def _deregister(self, waiter: AsyncWaiter) -> None:
        group = self._waiters.get(waiter.key)
        if group is not None:
            group.discard(waiter)
            if not group:
                del self._waiters[waiter.key]

    def _wake(self, key: str, kind: str) -> None:
        for waiter in self._waiters.get(key, ()):
            waiter._wake(kind)

    def _wake_all(self, kind: str) -> None:
        for group in self._waiters.values():
            for waiter in group:
                waiter._wake(kind)

    async def _run(self) -> None:
        backoff = _BACKOFF_MIN
        while True:
            pubsub: Any = self.client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while True:
                    message = await pubsub.get_message(timeout=_READ_TIMEOUT)
                    if message is not None:
                        backoff = _BACKOFF_MIN
                        self._handle(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection lost, or anything else: back off
                level = logging.WARNING if backoff == _BACKOFF_MIN else logging.DEBUG
                log.log(level, "asyncio channel %s: %s; reconnecting", self.channel, exc)
                self.connected = False
                self.epoch += 1
                self._wake_all(WAKE_RESET)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_MAX)

    def _handle(self, message: dict[str, Any]) -> None:
        self.epoch += 1
        kind = message.get("type")
        if kind == "subscribe":
            if self._confirmations:
                self.reconnects += 1
                self._wake_all(WAKE_RESET)  # messages may have been missed meanwhile
            self._confirmations += 1
            self.connected = True
            self._subscribed.set()
        elif kind == "message":
            self.received += 1
            data = message.get("data")
            self._dispatch(data if isinstance(data, (bytes, str)) else str(data))

    def _dispatch(self, message: bytes | str) -> None:
        match events.decode(message):
            case events.Done(key):
                self._wake(key, events.Done.KIND)
            case events.Failed(key):
                self._wake(key, events.Failed.KIND)
            case events.Invalidated(key):
                self._wake(key, events.Invalidated.KIND)
            case events.Cleared():
                self._wake_all(events.Invalidated.KIND)
            case events.ChannelProbe() as probe:
                self._delivered(probe.delay(time.time()))
            case events.Unknown():
                self.malformed += 1
            case _:
                pass  # tags, generations, sweeps: the process's notifier handles them

    def _delivered(self, seconds: float) -> None:
        if self.on_delivery is None:
            return
        try:
            self.on_delivery(seconds)
        except Exception:
            self.handler_errors += 1
            log.exception("delivery handler %r failed", self.on_delivery)
