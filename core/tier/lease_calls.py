"""The keys and arguments of each lease script, and what its answer means, in one place.

Both lease clients run the same Lua files (:mod:`tiercel.core.tier.scripts`):
:class:`~tiercel.core.tier.leases.LeaseManager` on redis-py's blocking client and
:class:`~tiercel.core.tier.async_leases.AsyncLeases` on ``redis.asyncio``.
:class:`LeaseCalls` builds each script's ``(keys, args)`` and reads its answer,
so the two clients cannot drift apart; it does no I/O.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from tiercel.core.encoding.cache_key import CacheKey
from tiercel.core.tier import events
from tiercel.core.tier.history import INVALIDATED_KEY, INVALIDATED_TAG, History

__all__ = ["PRESENT", "Held", "Lease", "LeaseCalls", "Present", "ScriptCall", "ms"]

#: Longest failure message a record keeps.
_MAX_FAILURE_MESSAGE: Final = 2_000

#: One script run: its KEYS and its ARGV.
ScriptCall = tuple[list[str], list[Any]]


@dataclass(frozen=True)
class Lease:
    """A held lease: ``token`` is its fence, ``epoch`` the key's invalidation counter then.

    ``ttl`` is the lease's lifetime in seconds; ``acquired_at`` is the
    client's ``timer()`` (monotonic) when it was taken. ``history`` is what the
    shared tier last recorded of the key (:mod:`tiercel.core.tier.history`),
    read in the same script: why its value is missing.
    """

    key: str
    token: int
    epoch: int
    ttl: float
    acquired_at: float
    history: History | None = None


@dataclass(frozen=True)
class Held:
    """Someone else holds the lease; it expires in ``holder_ttl`` seconds unless renewed."""

    holder_ttl: float


@dataclass(frozen=True)
class Present:
    """An acquire found a value already stored: read it instead."""


PRESENT: Final = Present()


def ms(seconds: float, what: str) -> int:
    """``seconds`` as whole milliseconds (at least 1); ValueError unless positive."""
    if not seconds > 0:
        raise ValueError(f"{what}={seconds!r}: expected a positive number of seconds")
    return max(1, round(seconds * 1000))


@dataclass(frozen=True)
class LeaseCalls:
    """Script arguments for leases of ``ttl_ms`` whose counters live ``state_ttl_ms``.

    ``channel`` overrides the pub/sub channel (default ``{namespace}:events``
    of each key); ``owner`` is stored beside a lease's token, for debugging.
    """

    ttl_ms: int
    state_ttl_ms: int
    channel: str | None = None
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    def channel_of(self, key: str) -> str:
        """The channel ``key``'s messages are published on."""
        return self.channel if self.channel is not None else CacheKey.of(key).channel

    def acquire(
        self,
        key: str,
        owner: str,
        ttl_ms: int,
        *,
        unless_present: bool,
        indexes: Sequence[str] = (),
        index_ttl_ms: int = 0,
    ) -> ScriptCall:
        """``acquire.lua``: take the lease, or learn its holder's remaining time; taking
        it, add ``key`` to each tag index in ``indexes`` (one server only: the index keys
        are in other cluster slots), their TTL at least ``index_ttl_ms``."""
        keys = CacheKey.of(key)
        return (
            [keys.lease, keys.fence, keys.epoch, keys.failure, keys.history, key, *indexes],
            [
                ttl_ms,
                owner or self.owner,
                self.state_ttl_ms,
                "1" if unless_present else "",
                index_ttl_ms,
            ],
        )

    @staticmethod
    def acquired(result: Any, key: str, ttl: float, started: float) -> Lease | Held | Present:
        """What ``acquire.lua`` answered."""
        if int(result[0]) == 2:
            return PRESENT
        if int(result[0]) == 0:
            return Held(max(0.0, int(result[1]) / 1000))
        history = History.decode(result[4], result[3]) if len(result) > 4 else None
        return Lease(key, int(result[1]), int(result[2]), ttl, started, history)

    def renew(self, lease: Lease) -> ScriptCall:
        """``renew.lua``: extend a lease that is still ours."""
        key = lease.key
        keys = CacheKey.of(key)
        return (
            [keys.lease, keys.fence, keys.epoch],
            [lease.token, ms(lease.ttl, "ttl"), self.state_ttl_ms],
        )

    @staticmethod
    def release(lease: Lease) -> ScriptCall:
        """``release.lua``: delete a lease that is still ours."""
        return [CacheKey.of(lease.key).lease], [lease.token]

    def write_back(
        self, lease: Lease, entry_bytes: bytes, ttl: float, inflight_id: str | None
    ) -> ScriptCall:
        """``write_back.lua``: store under fencing, release, publish done."""
        key = lease.key
        keys = CacheKey.of(key)
        return (
            [
                key,
                keys.lease,
                keys.fence,
                keys.epoch,
                keys.inflight,
                keys.history,
            ],
            [
                lease.token,
                lease.epoch,
                entry_bytes,
                ms(ttl, "ttl"),
                inflight_id or "",
                self.channel_of(key),
                events.Done(key).encode(),
                self.state_ttl_ms,
            ],
        )

    def fail(
        self,
        lease: Lease,
        error: BaseException | str,
        at: float,
        ttl: float,
        inflight_id: str | None,
    ) -> ScriptCall:
        """``fail.lua``: record a failure (JSON ``type``, ``message``, ``at``, ``token``),
        release the lease and publish failed."""
        if isinstance(error, BaseException):
            kind, message = type(error).__qualname__, str(error)
        else:
            kind, message = "Error", error
        record = json.dumps(
            {
                "type": kind,
                "message": message[:_MAX_FAILURE_MESSAGE],
                "at": at,
                "token": lease.token,
            }
        )
        key = lease.key
        keys = CacheKey.of(key)
        return (
            [
                keys.failure,
                keys.lease,
                keys.fence,
                keys.inflight,
                keys.history,
            ],
            [
                lease.token,
                record,
                ms(ttl, "ttl"),
                inflight_id or "",
                self.channel_of(key),
                events.Failed(key).encode(),
                self.state_ttl_ms,
            ],
        )

    @staticmethod
    def failure_key(key: str) -> str:
        """Where the failure record of ``key`` is kept."""
        return CacheKey.of(key).failure

    @staticmethod
    def failure_record(raw: Any) -> dict[str, Any] | None:
        """A failure record read from Redis, or None (none, corrupt)."""
        if raw is None:
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            return None
        return record if isinstance(record, dict) else None

    def invalidate(
        self, key: str, channel: str, *, publish: bool, by_tag: bool = False
    ) -> ScriptCall:
        """``invalidate.lua``: bump the epoch, delete value, marker and failure, publish;
        the key's history says invalidated by key, or ``by_tag``."""
        keys = CacheKey.of(key)
        return (
            [key, keys.inflight, keys.failure, keys.epoch, keys.history],
            [
                self.state_ttl_ms,
                channel,
                events.Invalidated(key).encode() if publish else "",
                INVALIDATED_TAG if by_tag else INVALIDATED_KEY,
            ],
        )

    @staticmethod
    def claim_inflight(key: str, task_id: str, ttl: float) -> ScriptCall:
        """``claim_inflight.lua``: mark ``task_id`` as computing ``key`` unless one is."""
        return [CacheKey.of(key).inflight], [task_id, ms(ttl, "ttl")]

    @staticmethod
    def claim_republish(key: str, period: float) -> ScriptCall:
        """``claim_republish.lua``: may this client re-publish ``key``'s task now?"""
        keys = CacheKey.of(key)
        return [keys.lease, keys.republish], [ms(period, "period")]
