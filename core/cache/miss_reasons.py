"""Why a value had to be computed: the fixed set of miss reasons and duplicate causes.

Every computation of a key (a miss in every tier) is counted under exactly one
reason, a fixed set so that metric labels stay bounded:

``first_computation``     nothing says the key was ever stored
``expired``               its value's TTL ran out
``invalidated_key``       invalidated by key
``invalidated_tag``       invalidated by one of its tags
``invalidated_version``   its function's generation moved (``invalidate_all``)
``invalidated_namespace`` the namespace's generation moved (``invalidate_namespace``)
``evicted_local``         this process's level evicted it and the shared tier never had it
``evicted_redis``         the shared tier lost it before its expiry (``maxmemory``, flush)
``refresh``               an early (XFetch) or stale-while-revalidate refresh
``uncacheable_argument``  an argument has no canonical encoding: no key, no cache
``error_not_cached``      its last computation raised and the error was not cached
``tier_unavailable``      the shared tier is down (breaker open, a failed call)

:func:`classify` decides a miss's reason from what is known, in this order:

1. The shared tier's record of the key (:mod:`tiercel.core.tier.history`), read
   by the same script that elected this computer, wins: a value absent in
   Redis is the decisive miss (a local eviction alone is no miss while Redis
   still holds the value). A written value gone after its expiry is
   ``expired``, gone before it ``evicted_redis``.
2. With no such record (none kept, the tier never had the value, no tier at
   all), this process's recent local fates of the key
   (:class:`~tiercel.core.cache.miss_book.MissBook`): an uncached failure, an
   eviction, an expiry.
3. Then a generation this process saw move within the value's TTL names
   ``invalidated_version`` or ``invalidated_namespace``. A bump gives every
   key of the function a new name, which has no record at all, so this is
   an attribution by time: after a bump, a first computation of arguments
   never computed before is counted as invalidated too. A new code version
   of a function (a new key version) is a ``first_computation``.
4. Otherwise ``first_computation``.

``refresh``, ``uncacheable_argument`` and ``tier_unavailable`` are known where
they happen and need no classification.

A *duplicate computation* is one the fleet's rules should have prevented,
counted apart (beside its miss reason) with its cause:

``lease_expired``     the lease was taken over: its holder died, stalled past its
                      lease, or gave it up without a value
``value_evicted``     another holder wrote the value and it is gone before its TTL
``tier_unavailable``  computed without a lease: nothing stopped another process
"""

from __future__ import annotations

from typing import Final

from tiercel.core.tier import history as records
from tiercel.core.tier.history import History

FIRST_COMPUTATION: Final = "first_computation"
EXPIRED_VALUE: Final = "expired"
INVALIDATED_KEY: Final = "invalidated_key"
INVALIDATED_TAG: Final = "invalidated_tag"
INVALIDATED_VERSION: Final = "invalidated_version"
INVALIDATED_NAMESPACE: Final = "invalidated_namespace"
EVICTED_LOCAL: Final = "evicted_local"
EVICTED_REDIS: Final = "evicted_redis"
REFRESH: Final = "refresh"
UNCACHEABLE_ARGUMENT: Final = "uncacheable_argument"
ERROR_NOT_CACHED: Final = "error_not_cached"
TIER_UNAVAILABLE: Final = "tier_unavailable"

#: Every miss reason, in the order tables show them.
REASONS: Final = (
    FIRST_COMPUTATION,
    EXPIRED_VALUE,
    INVALIDATED_KEY,
    INVALIDATED_TAG,
    INVALIDATED_VERSION,
    INVALIDATED_NAMESPACE,
    EVICTED_LOCAL,
    EVICTED_REDIS,
    REFRESH,
    UNCACHEABLE_ARGUMENT,
    ERROR_NOT_CACHED,
    TIER_UNAVAILABLE,
)

LEASE_EXPIRED: Final = "lease_expired"
VALUE_EVICTED: Final = "value_evicted"
#: Duplicate cause: computed without a lease (the same word as the miss reason).
NO_LEASE: Final = TIER_UNAVAILABLE

#: Every duplicate-computation cause.
CAUSES: Final = (LEASE_EXPIRED, VALUE_EVICTED, NO_LEASE)

#: Local fates of a key this process remembers (see ``MissBook``).
EVICTED: Final = "evicted"
EXPIRED: Final = "expired"
FAILED: Final = "failed"

_BY_HISTORY: Final = {
    records.INVALIDATED_KEY: INVALIDATED_KEY,
    records.INVALIDATED_TAG: INVALIDATED_TAG,
    records.FAILED: ERROR_NOT_CACHED,
}
_BY_LOCAL_FATE: Final = {FAILED: ERROR_NOT_CACHED, EVICTED: EVICTED_LOCAL, EXPIRED: EXPIRED_VALUE}


def classify(history: History | None, local: str | None, generation: str | None) -> str:
    """The reason of one miss (precedence in the module docstring).

    ``history`` is the shared tier's record of the key, ``local`` this process's
    recent fate of it (:data:`EVICTED`, :data:`EXPIRED`, :data:`FAILED`) and
    ``generation`` the invalidation reason of a generation that moved recently.
    """
    if history is not None:
        by_record = _BY_HISTORY.get(history.kind)
        if by_record is not None:
            return by_record
        return EXPIRED_VALUE if history.expired else EVICTED_REDIS
    if local is not None:
        return _BY_LOCAL_FATE.get(local, FIRST_COMPUTATION)
    if generation is not None:
        return generation
    return FIRST_COMPUTATION


def duplicate_cause(history: History | None) -> str | None:
    """The duplicate cause a record implies: another holder's value lost before its TTL."""
    if history is not None and history.expires_ms is not None and not history.expired:
        return VALUE_EVICTED
    return None
