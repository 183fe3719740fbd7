"""Fenced leases for asyncio code: the same Lua scripts, run through ``redis.asyncio``.

:class:`AsyncLeases` is the awaiting twin of
:class:`~tiercel.core.tier.leases.LeaseManager` for what a cache miss needs
(acquire, renew, release, fenced write-back, shared failures, invalidation,
publishing). Both run the scripts of :mod:`tiercel.core.tier.scripts` with the
keys and arguments :class:`~tiercel.core.tier.lease_calls.LeaseCalls` builds,
so a lease taken by an asyncio process and one taken by a worker thread
exclude each other, and every write-back is fenced the same way.

Redis errors raise :class:`~tiercel.core.errors.TierUnavailable`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import redis
import redis.asyncio as aioredis

from tiercel.core.errors import TierUnavailable
from tiercel.core.tier import scripts
from tiercel.core.tier.lease_calls import Held, Lease, LeaseCalls, Present, ScriptCall, ms
from tiercel.core.tier.leases import DEFAULT_FAILURE_TTL, DEFAULT_STATE_TTL
from tiercel.core.tier.scripts import ScriptName

__all__ = ["AsyncLeases"]

T = TypeVar("T")

#: The lease scripts this client runs.
_SCRIPTS: Final[tuple[ScriptName, ...]] = (
    "acquire",
    "renew",
    "release",
    "write_back",
    "fail",
    "invalidate",
    "claim_inflight",
    "claim_republish",
)


class AsyncLeases:
    """Lease scripts on one asyncio client; ``ttl`` and ``channel`` as in LeaseManager."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        ttl: float = 30.0,
        state_ttl: float = DEFAULT_STATE_TTL,
        channel: str | None = None,
        timer: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.ttl = ttl
        self.renew_interval = ttl / 3
        self.calls = LeaseCalls(ms(ttl, "ttl"), ms(state_ttl, "state_ttl"), channel)
        self._timer = timer
        self._wall_clock = wall_clock
        self._scripts = {name: scripts.register_async(client, name) for name in _SCRIPTS}

    async def _call(self, command: Callable[[], Awaitable[T]]) -> T:
        try:
            return await command()
        except redis.RedisError as exc:
            raise TierUnavailable(
                f"lease operation failed: {exc}; compute without the "
                "lease or retry once Redis is back"
            ) from exc

    async def _run(self, name: ScriptName, call: ScriptCall) -> Any:
        script = self._scripts[name]
        keys, args = call
        return await self._call(lambda: script(keys=keys, args=args))

    async def acquire(
        self, key: str, owner: str = "", *, unless_present: bool = False
    ) -> Lease | Held | Present:
        """Take ``key``'s lease, or learn how long its holder keeps it, or (with
        ``unless_present``) that a value is stored; one round trip."""
        started = self._timer()
        call = self.calls.acquire(key, owner, self.calls.ttl_ms, unless_present=unless_present)
        return self.calls.acquired(await self._run("acquire", call), key, self.ttl, started)

    async def renew(self, lease: Lease) -> bool:
        """Extend ``lease`` by its ttl if it is still ours; False once lost."""
        return bool(await self._run("renew", self.calls.renew(lease)))

    async def release(self, lease: Lease) -> bool:
        """Delete ``lease`` if it is still ours."""
        return bool(await self._run("release", self.calls.release(lease)))

    async def write_back(
        self, lease: Lease, entry_bytes: bytes, ttl: float, *, inflight_id: str | None = None
    ) -> bool:
        """Store a packed entry under fencing, release the lease, wake every waiter."""
        call = self.calls.write_back(lease, entry_bytes, ttl, inflight_id)
        return bool(await self._run("write_back", call))

    async def publish_failure(
        self,
        lease: Lease,
        error: BaseException | str,
        *,
        inflight_id: str | None = None,
        ttl: float = DEFAULT_FAILURE_TTL,
    ) -> bool:
        """Record that ``lease``'s computation failed, release it, wake the waiters."""
        call = self.calls.fail(lease, error, self._wall_clock(), ttl, inflight_id)
        return bool(await self._run("fail", call))

    async def read_failure(self, key: str) -> dict[str, Any] | None:
        """The failure record of ``key``'s last computation, or None."""
        raw = await self._call(lambda: self.client.get(self.calls.failure_key(key)))
        return self.calls.failure_record(raw)

    async def invalidate(self, key: str) -> int:
        """Invalidate ``key`` everywhere (epoch bump, deletes, ``i|key``); its new epoch."""
        call = self.calls.invalidate(key, self.calls.channel_of(key), publish=True)
        result = await self._run("invalidate", call)
        return int(result[0])

    async def publish(self, channel: str, message: str) -> int:
        """Publish one channel message."""
        return int(await self._call(lambda: self.client.publish(channel, message)))

    async def claim_inflight(self, key: str, task_id: str, ttl: float) -> str | None:
        """Mark ``task_id`` as computing ``key``: None if claimed, else the id already there."""
        result = await self._run("claim_inflight", self.calls.claim_inflight(key, task_id, ttl))
        if result is None:
            return None
        return result.decode() if isinstance(result, bytes) else str(result)

    async def claim_republish(self, key: str, period: float) -> bool:
        """May this client re-publish ``key``'s task now (nobody holds its lease, and no
        other client re-published it in the last ``period`` seconds)?"""
        return bool(await self._run("claim_republish", self.calls.claim_republish(key, period)))
