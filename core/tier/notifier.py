"""Waiting without polling, and invalidation delivery: one pub/sub listener per process.

Every process subscribes one connection to its namespace's channel
(:func:`tiercel.core.encoding.prefixes.channel_name`) and serves it with one daemon thread.
Messages are decoded by :mod:`tiercel.core.tier.events`, which holds the
vocabulary (``d|<key>`` done, ``f|<key>`` failed, ``i|<key>`` invalidated,
``t|<tag>``, ``g|<scope>|<generation>``, ``c|`` cleared, ``s|`` sweep,
``q|<reply>|<key>`` inspect, ``p|<sent>`` delivery probe); one
that decodes to :class:`~tiercel.core.tier.events.Unknown` is counted in
``malformed`` and otherwise ignored.

Delivery: a ``p|<sent>`` message (:class:`~tiercel.core.tier.events.ChannelProbe`,
beat's aggregation publishes one a period) reaches ``on_delivery`` with
``max(0, time.time() - sent)``: it came over the same channel, connection and
thread as the invalidations, behind whatever they queued, so the figure is the
delay an invalidation published at that moment met before this process dropped
its copies. The sender's and this host's wall clocks both enter it (their skew
is part of the figure). These are not the liveness probes below, which are
``PING`` answers on this connection and measure nothing across processes.

A waiting thread registers a :class:`Waiter` for its key *before* it
re-reads the value, so a completion published in between is not lost, then
waits at most the lease's remaining time. :meth:`Waiter.wait` answers why it
woke: ``"d"``, ``"f"``, ``"i"``, :data:`WAKE_RESET` (``"r"``: the listener
reconnected or stopped, so messages may have been missed) or None on
timeout. Every answer means "re-check the value and the lease".

After every reconnect the listener calls ``on_reset`` (the process may have
missed invalidations: drop local levels and cached generations) and wakes
every waiter, so nobody waits on a lost message longer than it takes to
reconnect. The reset runs when the new subscription is confirmed, so
everything published after that point is delivered.

Silence: with a :class:`~tiercel.core.tier.liveness.ChannelLiveness`, the
listener also sends a probe (``PING`` with a numbered token, answered on the
same connection, in order with the messages) every third of the liveness
bound, and advances the liveness deadline by each answer's send time. A
probe (or a subscription) left unanswered for the bound counts as a lost
channel: the listener closes the connection and reconnects (``silences``).
Whenever an answer finds the deadline already passed (the channel was
silent, even if it came back on its own), ``on_reset`` runs before the
deadline moves again, so local levels never answer across a gap.

Capacity: at most ``max_waiters`` registered waiters. Beyond that,
:meth:`Notifier.waiter` returns an unregistered waiter whose :meth:`wait`
sleeps at most :data:`OVERFLOW_POLL` seconds and answers None, so the caller
degrades to slow polling rather than failing (counted in ``overflowed``).
The same holds after :meth:`Notifier.stop` and in a process where the
listener could not subscribe yet.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Final, assert_never

import redis

from tiercel.core.errors import ChannelSilent
from tiercel.core.tier import events
from tiercel.core.tier.liveness import ChannelLiveness

__all__ = [
    "OVERFLOW_POLL",
    "WAKE_DONE",
    "WAKE_FAILED",
    "WAKE_INVALIDATED",
    "WAKE_RESET",
    "Notifier",
    "Waiter",
]

log = logging.getLogger(__name__)

# Why Waiter.wait woke: the kind of the event for its key, or a reset (no message).
WAKE_DONE: Final = events.Done.KIND
WAKE_FAILED: Final = events.Failed.KIND
WAKE_INVALIDATED: Final = events.Invalidated.KIND
WAKE_RESET: Final = "r"
#: Longest sleep of a waiter that could not be registered.
OVERFLOW_POLL: Final = 0.05

_POLL: Final = 0.2  # the listener's read timeout: how quickly stop() is noticed
_BACKOFF_MIN: Final = 0.05
_BACKOFF_MAX: Final = 2.0
_PROBE_PREFIX: Final = "tiercel-probe:"


class Waiter:
    """A registration for wake-ups of one key; see :meth:`Notifier.waiter`.

    Wake-ups that arrive while nobody is inside :meth:`wait` are kept (the
    first one) and answered by the next :meth:`wait`, so a registered waiter
    can re-check and wait again without losing a message.
    """

    __slots__ = ("_event", "_kind", "_notifier", "key", "registered", "since")

    def __init__(self, notifier: Notifier, key: str, registered: bool) -> None:
        self.key = key
        self.registered = registered
        self._notifier = notifier
        self._event = threading.Event()
        self._kind: str | None = None
        #: The notifier's :attr:`~Notifier.epoch` when this registered or was last woken:
        #: a read started at that epoch or later saw everything it was woken for.
        self.since = notifier.epoch

    def _wake(self, kind: str) -> None:  # called under the notifier's lock
        if self._kind is None:
            self._kind = kind
        self.since = self._notifier.epoch
        self._event.set()

    def wait(self, timeout: float | None) -> str | None:
        """Block until woken (``"d"``/``"f"``/``"i"``/``"r"``) or ``timeout`` seconds (None)."""
        if not self.registered:
            if timeout is None or timeout > OVERFLOW_POLL:
                timeout = OVERFLOW_POLL
            if timeout > 0:
                self._event.wait(timeout)
            return None
        if not self._event.wait(timeout):
            return None
        with self._notifier._lock:
            kind, self._kind = self._kind, None
            self._event.clear()
        return kind

    def close(self) -> None:
        """Deregister; idempotent."""
        if self.registered:
            self._notifier._deregister(self)
            self.registered = False

    def __enter__(self) -> Waiter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Waiter({self.key!r}, registered={self.registered})"


class Notifier:
    """The process's one pub/sub listener on ``channel``; see the module docstring.

    Callbacks run on the listener thread and must be quick; an exception in
    one is logged and counted (``handler_errors``), never fatal. Create, start
    and use it in one process (after fork); :meth:`stop` on shutdown.

    For metrics: ``connected`` (subscribed right now), ``reconnects`` (resets:
    every confirmed subscription after the first, plus a first one that came
    after :meth:`start` gave up waiting), ``received`` (messages),
    ``last_message_at`` (``time.monotonic()`` of the last one),
    ``handler_errors``, ``malformed`` and ``overflowed`` (unregistered waiters).
    With ``liveness``: ``probes`` (sent), ``answers`` (probe answers received)
    and ``silences`` (connections given up because an answer did not come).
    """

    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,  # a cluster's pubsub hears every node
        *,
        channel: str,
        on_invalidate: Callable[[str], None] | None = None,
        on_tag: Callable[[str], object] | None = None,
        on_generation: Callable[[str, int], None] | None = None,
        on_reset: Callable[[], None] | None = None,
        on_clear: Callable[[], None] | None = None,
        on_done: Callable[[str], None] | None = None,
        on_failed: Callable[[str], None] | None = None,
        max_waiters: int = 10_000,
        on_sweep: Callable[[], None] | None = None,
        liveness: ChannelLiveness | None = None,
        on_inspect: Callable[[str, str], object] | None = None,
        on_delivery: Callable[[float], object] | None = None,
    ) -> None:
        self.client = client
        self.channel = channel
        self.on_invalidate = on_invalidate
        self.on_tag = on_tag
        self.on_generation = on_generation
        self.on_reset = on_reset
        self.on_clear = on_clear
        #: Called with the key of every completed computation: a newer value exists,
        #: so a local copy of that key is outdated.
        self.on_done = on_done
        #: Called with the key of every failed computation (its waiters are woken too).
        self.on_failed = on_failed
        self.max_waiters = max_waiters
        #: Called on a sweep message (``s|``): beat asks every process, prefork children
        #: included, to drop its expired local entries; keep it quick (wake a thread).
        self.on_sweep = on_sweep
        #: Called with ``(key, reply)`` on an inspect request (``q|``): say what the local
        #: levels hold of ``key`` on the reply list; a bounded, rare admin request.
        self.on_inspect = on_inspect
        #: Called with the seconds a delivery probe (``p|``) took from its publisher's
        #: clock to this listener's; keep it quick (record into a sketch).
        self.on_delivery = on_delivery
        #: Advanced by every probe answer; None: no probes (only loud failures are seen).
        self.liveness = liveness
        # (token, monotonic send time) of the subscription and probes not answered yet,
        # oldest first: Redis answers them in order. Only the listener thread uses it.
        self._outstanding: deque[tuple[str | None, float]] = deque()
        self._probe_number = 0
        self._heard_at = 0.0  # monotonic time anything last arrived on the subscription
        self.probes = 0
        self.answers = 0
        self.silences = 0
        self._pid = os.getpid()
        self._lock = threading.Lock()
        #: Counts every wake-up delivered (one per message for a key, one per reset),
        #: advanced before the waiters it wakes (see :class:`Waiter.since`).
        self.epoch = 0
        self._waiters: dict[str, list[Waiter]] = {}
        self._count = 0
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._subscribed = threading.Event()
        self._confirmations = 0
        self._start_timed_out = False
        self.connected = False
        self.reconnects = 0
        self.received = 0
        self.last_message_at: float | None = None
        self.handler_errors = 0
        self.overflowed = 0
        self.malformed = 0

    # --- lifecycle ---

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise RuntimeError(
                "this Notifier was created in another process: create one per "
                "process after fork (worker_process_init)"
            )

    @property
    def started(self) -> bool:
        """True once :meth:`start` ran (the listener may still be reconnecting)."""
        return self._thread is not None

    def start(self, timeout: float = 5.0) -> bool:
        """Start the listener; True once the subscription is confirmed within ``timeout``.

        After a True answer no message published later is missed (short of a
        reconnect, which resets). On False the listener keeps trying in the
        background and resets (``on_reset``, all waiters woken) when it
        subscribes. Idempotent.
        """
        self._check_process()
        with self._lock:
            if self._stopping.is_set():
                return False
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tiercel-notifier", daemon=True
                )
                self._thread.start()
        if self._subscribed.wait(timeout):
            return True
        with self._lock:
            if self._confirmations == 0:
                self._start_timed_out = True
                return False
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Unsubscribe, close the connection, join the thread; wake every waiter."""
        self._stopping.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._wake_all(WAKE_RESET)

    @property
    def live(self) -> bool:
        """True while the channel is known live: within the liveness bound of an answer
        (without liveness: while subscribed)."""
        return self.liveness.live() if self.liveness is not None else self.connected

    # --- waiting ---

    def waiter(self, key: str) -> Waiter:
        """Register for wake-ups of ``key``; do this before re-reading the value.

        Starts the listener on first use. See the module docstring for what
        happens beyond ``max_waiters`` or when the listener is not running.
        """
        if self._thread is None:
            self.start(timeout=1.0)
        else:
            self._check_process()
        with self._lock:
            if self._stopping.is_set() or self._count >= self.max_waiters:
                self.overflowed += 1
                return Waiter(self, key, registered=False)
            waiter = Waiter(self, key, registered=True)
            self._waiters.setdefault(key, []).append(waiter)
            self._count += 1
        return waiter

    @property
    def waiting(self) -> int:
        """How many waiters are registered."""
        return self._count

    def _deregister(self, waiter: Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(waiter.key)
            if waiters is None:
                return
            try:
                waiters.remove(waiter)
            except ValueError:
                return
            self._count -= 1
            if not waiters:
                del self._waiters[waiter.key]

    def _wake(self, key: str, kind: str) -> None:
        with self._lock:
            self.epoch += 1
            for waiter in self._waiters.get(key, ()):
                waiter._wake(kind)

    def _wake_all(self, kind: str) -> None:
        with self._lock:
            self.epoch += 1
            for waiters in self._waiters.values():
                for waiter in waiters:
                    waiter._wake(kind)

    # --- publishing ---

    def publish(self, message: str) -> int:
        """Publish ``message`` (an event's :meth:`encode`) on the channel; returns how many
        subscribers got it.

        Raises redis errors (an unpublished invalidation must not pass silently).
        """
        return int(self.client.publish(self.channel, message))

    # --- the listener ---

    def _run(self) -> None:
        backoff = _BACKOFF_MIN
        pubsub: Any = None
        next_probe = 0.0
        try:
            while not self._stopping.is_set():
                try:
                    if pubsub is None:
                        pubsub = self.client.pubsub()  # type: ignore[no-untyped-call, unused-ignore]
                        self._outstanding.clear()
                        self._heard_at = time.monotonic()
                        self._outstanding.append((None, self._heard_at))
                        pubsub.subscribe(self.channel)
                        next_probe = time.monotonic()
                    timeout = _POLL
                    if self.liveness is not None:
                        next_probe = self._probe(pubsub, next_probe, self.liveness)
                        timeout = max(0.0, min(_POLL, next_probe - time.monotonic()))
                    message = pubsub.get_message(timeout=timeout)
                except ChannelSilent as exc:
                    self.silences += 1
                    self.connected = False
                    log.warning("invalidation channel %s: %s; reconnecting", self.channel, exc)
                    self._close(pubsub)
                    pubsub = None
                    continue
                except Exception as exc:  # connection lost, or anything else: back off
                    # One warning per outage, not one per attempt: retries are DEBUG.
                    level = logging.WARNING if backoff == _BACKOFF_MIN else logging.DEBUG
                    self.connected = False
                    log.log(
                        level,
                        "invalidation channel %s: %s; reconnecting in %.2fs",
                        self.channel,
                        exc,
                        backoff,
                    )
                    if pubsub is not None:
                        self._close(pubsub)
                        pubsub = None
                    self._stopping.wait(backoff)
                    backoff = min(backoff * 2, _BACKOFF_MAX)
                    continue
                if message is None:
                    continue
                backoff = _BACKOFF_MIN
                self._handle(message)
        finally:
            if pubsub is not None:
                try:
                    pubsub.unsubscribe(self.channel)
                except Exception:  # closing anyway
                    log.debug("unsubscribe failed", exc_info=True)
                self._close(pubsub)
            self.connected = False

    def _probe(self, pubsub: Any, next_probe: float, liveness: ChannelLiveness) -> float:
        """Send a probe when one is due; raise ChannelSilent when an answer is overdue.

        Returns when the next probe is due.
        """
        now = time.monotonic()
        # A backlog of messages delays the answer without the connection being silent:
        # the deadline alone keeps the levels from answering then, no reconnect needed.
        if (
            self._outstanding
            and now - self._outstanding[0][1] > liveness.bound
            and now - self._heard_at > liveness.bound
        ):
            raise ChannelSilent(
                f"no answer on the subscription for {now - self._outstanding[0][1]:.2f}s "
                f"(bound {liveness.bound:g}s)"
            )
        if now < next_probe:
            return next_probe
        self._probe_number += 1
        token = f"{_PROBE_PREFIX}{self._probe_number}"
        self._outstanding.append((token, now))
        pubsub.ping(token)
        self.probes += 1
        # A fixed cadence: late wake-ups must not stretch the interval past a third.
        due = next_probe + liveness.probe_interval
        return due if due > now else now + liveness.probe_interval

    def _answered(self, token: str | None) -> float | None:
        """Send time of the subscription (None) or probe ``token`` just answered."""
        while self._outstanding:
            sent, sent_at = self._outstanding.popleft()
            if sent == token:
                return sent_at
        return None

    def _alive(self, sent_at: float | None) -> None:
        """An answer to something sent at ``sent_at``: advance the liveness deadline,
        dropping local state first if the channel had lapsed meanwhile."""
        liveness = self.liveness
        if liveness is None or sent_at is None:
            return
        if liveness.lapsed() and self._confirmations > 0:
            # Messages may have been held up or lost while nobody knew: the levels
            # must not answer across the gap.
            liveness.lapses += 1
            log.info("invalidation channel %s was silent: dropping local state", self.channel)
            self._call(self.on_reset)
            self._wake_all(WAKE_RESET)
        liveness.confirm(sent_at)

    @staticmethod
    def _close(pubsub: Any) -> None:
        try:
            pubsub.close()
        except Exception:  # a dead connection may fail to close; nothing to keep
            log.debug("closing the pub/sub connection failed", exc_info=True)

    def _handle(self, message: dict[str, Any]) -> None:
        self._heard_at = time.monotonic()
        kind = message.get("type")
        if kind == "subscribe":
            self._confirmed(self._answered(None))
        elif kind == "pong":
            data = message.get("data")
            token = data.decode() if isinstance(data, bytes) else str(data)
            if token.startswith(_PROBE_PREFIX):
                self.answers += 1
                self._alive(self._answered(token))
        elif kind == "message":
            self.received += 1
            self.last_message_at = time.monotonic()
            data = message.get("data")
            self._dispatch(data if isinstance(data, (bytes, str)) else str(data))

    def _confirmed(self, sent_at: float | None) -> None:
        """A (re)subscription is confirmed: reset unless it is the clean first one."""
        with self._lock:
            reset = self._confirmations > 0 or self._start_timed_out
            self._confirmations += 1
        self.connected = True
        if reset:
            self.reconnects += 1
            log.info("invalidation channel %s re-subscribed: dropping local state", self.channel)
            self._call(self.on_reset)
            self._wake_all(WAKE_RESET)
        elif self.liveness is not None:
            # Whatever was stored before the channel was live may have missed a message.
            self._call(self.on_reset)
        if self.liveness is not None and sent_at is not None:
            self.liveness.confirm(sent_at)  # the reset above, when due, came first
        self._subscribed.set()

    def _dispatch(self, message: bytes | str) -> None:
        match events.decode(message):
            case events.Done(key):
                self._call(self.on_done, key)
                self._wake(key, WAKE_DONE)
            case events.Failed(key):
                self._call(self.on_failed, key)
                self._wake(key, WAKE_FAILED)
            case events.Invalidated(key):
                self._call(self.on_invalidate, key)
                self._wake(key, WAKE_INVALIDATED)
            case events.TagInvalidated(tag):
                self._call(self.on_tag, tag)
            case events.GenerationMoved(scope, generation):
                self._call(self.on_generation, scope, generation)
            case events.Cleared():
                self._call(self.on_clear)
                self._wake_all(WAKE_INVALIDATED)
            case events.SweepRequested():
                self._call(self.on_sweep)
            case events.InspectRequested(reply, key):
                self._call(self.on_inspect, key, reply)
            case events.ChannelProbe() as probe:
                self._call(self.on_delivery, probe.delay(time.time()))
            case events.Unknown():
                self.malformed += 1
            case unreachable:
                assert_never(unreachable)

    def _call(self, handler: Callable[..., object] | None, *args: Any) -> None:
        if handler is None:
            return
        try:
            handler(*args)
        except Exception:
            self.handler_errors += 1
            log.exception("invalidation handler %r failed", handler)

    def __repr__(self) -> str:
        return (
            f"Notifier({self.channel!r}, connected={self.connected}, live={self.live}, "
            f"waiting={self._count}, reconnects={self.reconnects})"
        )
