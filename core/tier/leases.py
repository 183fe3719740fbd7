"""Cluster-wide single-flight: leases with fencing, write-back, invalidation, in-flight claims.

One computation per cache key across the fleet runs under a lease. Every
operation on a key is one Lua script over keys that share the value key's
``{digest}`` hash tag (see :class:`tiercel.core.encoding.cache_key.CacheKey`), so each is
atomic and works on Redis Cluster:

``lease``   ``"<token>:<owner>"`` with a PX expiry; renewed while computing.
``fence``   the newest token handed out; a token only grows.
``epoch``   the key's invalidation counter; bumped by every invalidation.
``inflight`` the task id computing the key (coalescing at submit).
``err``     a short-lived record of a failed computation.
``hist``    the key's last fate (written until, invalidated, failed): why a later
            miss missed (:mod:`tiercel.core.tier.history`), read by acquire.

:meth:`LeaseManager.write_back` stores the value only if the lease's token is
still the newest fence and the epoch has not moved since :meth:`acquire`, so a
holder that lost its lease (paused, partitioned, expired) can never overwrite
a newer value or resurrect an invalidated one. Fence and epoch are
time-floored counters with a long TTL (``state_ttl``): losing them to expiry
or LRU eviction can only reject a write-back (see :mod:`tiercel.core.tier.scripts`).

The protocol of a caller that needs ``key`` (the lead's integration)::

    with notifier.waiter(key) as waiter:        # subscribe first ...
        while True:
            if (entry := tier.get_entry(key)):  # ... then re-read: no lost wake-up
                return entry
            got = leases.acquire(key)
            if isinstance(got, Lease):
                with renewer.holding(got):      # tiercel.core.tier.renewer
                    ...compute, then leases.write_back(got, entry_bytes, ttl)
                return ...
            if waiter.wait(got.holder_ttl + slack) == WAKE_FAILED:
                raise ... leases.read_failure(key)
            # any other wake-up or a timeout: loop, re-read, maybe take over

Redis errors surface as :class:`~tiercel.core.errors.TierUnavailable` (a caller that
cannot lease computes without one: cache trouble never fails a task).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TypeVar

import redis
from redis.commands.core import Script

from tiercel.core.encoding.cache_key import CacheKey
from tiercel.core.errors import TierUnavailable
from tiercel.core.tier import events, scripts
from tiercel.core.tier.connections import CacheClient, is_cluster
from tiercel.core.tier.lease_calls import PRESENT, Held, Lease, LeaseCalls, Present
from tiercel.core.tier.lease_calls import ms as _ms
from tiercel.core.tier.sent_script import SentCall, SentScript

__all__ = ["DEFAULT_STATE_TTL", "PRESENT", "Held", "Lease", "LeaseManager", "Present"]

#: How long fence and epoch counters outlive their last use (1 day).
DEFAULT_STATE_TTL: Final = 86_400.0
#: How long a failure record stays readable after :meth:`LeaseManager.publish_failure`.
DEFAULT_FAILURE_TTL: Final = 10.0

T = TypeVar("T")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


class LeaseManager:
    """Leases, fenced write-back, invalidation and in-flight claims on one Redis client.

    ``ttl`` is the default lease lifetime, ``renew_interval`` (default
    ``ttl / 3``) how often a :class:`~tiercel.core.tier.renewer.LeaseRenewer`
    extends it. ``state_ttl`` bounds how long fence and epoch counters outlive
    their last use; a computation longer than that has its write-back
    rejected. ``channel`` overrides the pub/sub channel (default
    ``{namespace}:events`` of each key). ``timer`` stamps
    :attr:`Lease.acquired_at`; ``wall_clock`` stamps failure records.
    Thread-safe; create one per process (after fork).
    """

    def __init__(
        self,
        client: CacheClient,
        *,
        ttl: float = 30.0,
        renew_interval: float | None = None,
        state_ttl: float = DEFAULT_STATE_TTL,
        channel: str | None = None,
        timer: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._ttl_ms = _ms(ttl, "ttl")
        self.ttl = ttl
        self.renew_interval = ttl / 3 if renew_interval is None else renew_interval
        if not self.renew_interval > 0:
            raise ValueError(f"renew_interval={renew_interval!r}: expected a positive number")
        self._state_ttl_ms = _ms(state_ttl, "state_ttl")
        if state_ttl < ttl:
            raise ValueError(f"state_ttl={state_ttl!r} must be at least the lease ttl ({ttl!r})")
        self.client = client
        #: Whether :meth:`acquire` can add the key to its tag indexes in its own script:
        #: on one server, yes; a cluster keeps each tag index in its tag's slot.
        self.indexes_tags = not is_cluster(client)
        self.channel = channel
        self._timer = timer
        self._wall_clock = wall_clock
        self.calls = LeaseCalls(self._ttl_ms, self._state_ttl_ms, channel)
        self._acquire = scripts.register(client, "acquire")
        self._renew = scripts.register(client, "renew")
        self._release = scripts.register(client, "release")
        self._release_abandoned = scripts.register(client, "release_abandoned")
        self._claim_republish = scripts.register(client, "claim_republish")
        self._write_back = scripts.register(client, "write_back")
        self._fail = scripts.register(client, "fail")
        self._invalidate = scripts.register(client, "invalidate")
        self._claim = scripts.register(client, "claim_inflight")
        self._delete_if_equal = scripts.register(client, "delete_if_equal")

    # --- plumbing ---

    def _channel(self, key: str) -> str:
        return self.calls.channel_of(key)

    @staticmethod
    def _call(func: Callable[[], T]) -> T:
        try:
            return func()
        except redis.RedisError as exc:
            raise TierUnavailable(
                f"lease operation failed: {exc}; compute without the "
                "lease or retry once Redis is back"
            ) from exc

    def _run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        return self._call(lambda: script(keys=keys, args=args))

    def _run_many(self, script: Script, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """``script`` once per call in one pipelined round trip (see :func:`scripts.run_many`)."""
        return self._call(lambda: scripts.run_many(self.client, script, calls))

    # --- leases ---

    def acquire(
        self,
        key: str,
        owner: str = "",
        *,
        ttl: float | None = None,
        unless_present: bool = False,
        indexes: Sequence[str] = (),
        index_ttl: float = 0.0,
    ) -> Lease | Held | Present:
        """Take ``key``'s lease (one round trip), or learn how long its holder keeps it.

        ``owner`` (default ``host:pid``) is stored beside the token, for
        debugging. A successful acquire clears an old failure record. With
        ``unless_present``, a value already stored under ``key`` is reported
        (:class:`Present`) instead of taking the lease, in the same round trip.
        Taking the lease adds ``key`` to each tag index in ``indexes`` (keys of
        :func:`~tiercel.core.tier.tag_index.tag_index_key`), their TTL at least
        ``index_ttl`` seconds, in the same script: only where :attr:`indexes_tags`.
        """
        ttl = self.ttl if ttl is None else ttl
        ttl_ms = self._ttl_ms if ttl == self.ttl else _ms(ttl, "ttl")
        started = self._timer()
        call = self._acquire_call(key, owner, ttl_ms, unless_present, indexes, index_ttl)
        result = self._run(self._acquire, *call)
        return self.calls.acquired(result, key, ttl, started)

    def send_acquire(
        self,
        key: str,
        owner: str = "",
        *,
        unless_present: bool = False,
        indexes: Sequence[str] = (),
        index_ttl: float = 0.0,
    ) -> SentCall[Lease | Held | Present]:
        """:meth:`acquire` with the default ttl, sent now and answered by ``result()``
        (see :mod:`tiercel.core.tier.sent_script`). The lease's ttl counts from now."""
        started = self._timer()
        call = self._acquire_call(key, owner, self._ttl_ms, unless_present, indexes, index_ttl)
        sent = SentScript.send(self.client, self._acquire, *call)
        return SentCall(sent, lambda result: self.calls.acquired(result, key, self.ttl, started))

    def _acquire_call(
        self,
        key: str,
        owner: str,
        ttl_ms: int,
        unless_present: bool,
        indexes: Sequence[str],
        index_ttl: float,
    ) -> tuple[list[str], list[Any]]:
        if indexes and not self.indexes_tags:
            raise ValueError("a cluster's tag indexes are in other slots: index them apart")
        return self.calls.acquire(
            key,
            owner,
            ttl_ms,
            unless_present=unless_present,
            indexes=indexes,
            index_ttl_ms=_ms(index_ttl, "index_ttl") if indexes else 0,
        )

    def renew(self, lease: Lease) -> bool:
        """Extend ``lease`` by its ttl if it is still ours; False once lost."""
        return bool(self._run(self._renew, *self._renew_call(lease)))

    def renew_many(self, leases: Sequence[Lease]) -> list[bool]:
        """:meth:`renew` each lease in one round trip."""
        return [
            bool(r) for r in self._run_many(self._renew, [self._renew_call(le) for le in leases])
        ]

    def _renew_call(self, lease: Lease) -> tuple[list[str], list[Any]]:
        return self.calls.renew(lease)

    def release(self, lease: Lease) -> bool:
        """Delete ``lease`` if it is still ours; True if it was."""
        return bool(self._run(self._release, *self.calls.release(lease)))

    def release_abandoned(self, key: str, task_id: str) -> bool:
        """Free ``key``'s lease if the task ``task_id`` holds it (its process is gone:
        hard time limit, revoke, worker lost), clear its in-flight marker, and wake the
        waiters so one takes over at once instead of after the lease's TTL."""
        keys = CacheKey.of(key)
        return bool(
            self._run(
                self._release_abandoned,
                [keys.lease, keys.inflight],
                [task_id, self._channel(key), events.Done(key).encode()],
            )
        )

    def claim_republish(self, key: str, period: float) -> bool:
        """May this client re-publish ``key``'s task now? Only when nobody holds its lease
        and no other client re-published it in the last ``period`` seconds."""
        return bool(self._run(self._claim_republish, *self.calls.claim_republish(key, period)))

    def write_back(
        self,
        lease: Lease,
        entry_bytes: bytes,
        ttl: float,
        *,
        inflight_id: str | None = None,
        tags_index: Sequence[str] = (),
    ) -> bool:
        """Store a packed :class:`Entry` under ``lease``; True if stored.

        Stored (``SET PX ttl``) only if ``lease.token`` is still the newest
        fence and the epoch has not moved since acquire. Either way the lease
        is released if still ours, the in-flight marker is cleared if it
        holds ``inflight_id``, and ``d|<key>`` is published so waiters
        re-check. Tag indexes are the caller's (add the key to them *before*
        :meth:`acquire`, so a tag invalidation during the computation finds
        it); ``tags_index`` is accepted for that contract and ignored here.
        """
        del tags_index
        return bool(
            self._run(
                self._write_back, *self.calls.write_back(lease, entry_bytes, ttl, inflight_id)
            )
        )

    def send_write_back(
        self, lease: Lease, entry_bytes: bytes, ttl: float, *, inflight_id: str | None = None
    ) -> SentCall[bool]:
        """:meth:`write_back`, sent now and answered by ``result()`` (True if stored);
        Redis runs it as soon as it arrives (see :mod:`tiercel.core.tier.sent_script`)."""
        keys, args = self.calls.write_back(lease, entry_bytes, ttl, inflight_id)
        return SentCall(SentScript.send(self.client, self._write_back, keys, args), bool)

    # --- failures ---

    def publish_failure(
        self,
        lease: Lease,
        error: BaseException | str,
        *,
        inflight_id: str | None = None,
        ttl: float = DEFAULT_FAILURE_TTL,
    ) -> bool:
        """Record that ``lease``'s computation failed, release it and publish ``f|<key>``.

        The record (``{"type", "message", "at", "token"}``, JSON) lives ``ttl``
        seconds. Only the newest lease records and publishes (True): a holder
        that was fenced out must not fail the waiters of its successor. The
        lease and the in-flight marker are released either way.
        """
        call = self.calls.fail(lease, error, self._wall_clock(), ttl, inflight_id)
        return bool(self._run(self._fail, *call))

    def read_failure(self, key: str) -> dict[str, Any] | None:
        """The failure record of ``key``'s last computation, or None (none, expired, corrupt)."""
        raw = self._call(lambda: self.client.get(self.calls.failure_key(key)))
        return self.calls.failure_record(raw)

    # --- invalidation ---

    def invalidate(self, key: str, *, channel: str | None = None) -> int:
        """Invalidate ``key`` everywhere; returns its new epoch (0: nothing was computing).

        One script: bump the epoch (an in-flight computation's write-back is
        then rejected), delete the value, the in-flight marker and the
        failure record, and publish ``i|<key>`` on ``channel`` (default
        ``{namespace}:events``) so every process drops its local copies.
        """
        result = self._run(
            self._invalidate,
            *self._invalidate_call(
                key, channel if channel is not None else self._channel(key), publish=True
            ),
        )
        return int(result[0])

    def invalidate_keys(self, keys: Sequence[str | bytes]) -> int:
        """Invalidate many keys in one round trip without publishing per key.

        For the tag path: the caller publishes one ``t|<tag>`` afterwards; each key's
        history says it was invalidated by tag.
        Returns how many values existed.
        """
        calls = [self._invalidate_call(_text(k), "", publish=False, by_tag=True) for k in keys]
        return sum(int(result[1]) for result in self._run_many(self._invalidate, calls))

    def _invalidate_call(
        self, key: str, channel: str, *, publish: bool, by_tag: bool = False
    ) -> tuple[list[str], list[Any]]:
        return self.calls.invalidate(key, channel, publish=publish, by_tag=by_tag)

    # --- coalescing at submit ---

    def claim_inflight(self, key: str, task_id: str, ttl: float) -> str | None:
        """Mark ``task_id`` as computing ``key``: None if claimed, else the id already there."""
        result = self._run(self._claim, *self._claim_call(key, task_id, ttl))
        return None if result is None else _text(result)

    def claim_inflight_many(self, pairs: Sequence[tuple[str, str]], ttl: float) -> list[str | None]:
        """:meth:`claim_inflight` for many (key, task id) pairs in one round trip."""
        calls = [self._claim_call(key, task_id, ttl) for key, task_id in pairs]
        return [None if r is None else _text(r) for r in self._run_many(self._claim, calls)]

    def _claim_call(self, key: str, task_id: str, ttl: float) -> tuple[list[str], list[Any]]:
        return self.calls.claim_inflight(key, task_id, ttl)

    def inflight(self, key: str) -> str | None:
        """The task id computing ``key``, or None."""
        raw = self._call(lambda: self.client.get(CacheKey.of(key).inflight))
        return None if raw is None else _text(raw)

    def clear_inflight(self, key: str, task_id: str) -> bool:
        """Delete ``key``'s in-flight marker if it still names ``task_id``."""
        return bool(self._run(self._delete_if_equal, [CacheKey.of(key).inflight], [task_id]))

    def __repr__(self) -> str:
        return f"LeaseManager(ttl={self.ttl!r}, renew_interval={self.renew_interval!r})"
