"""The one exception root of tiercel and its subtree, one branch per subsystem.

Messages say what was wrong and what to do about it.
"""

from __future__ import annotations


class TiercelError(Exception):
    """Root of every error tiercel raises on purpose."""


class SettingsError(TiercelError, ValueError):
    """A setting is missing or malformed; the message names the variable."""


class CacheError(TiercelError):
    """Something went wrong in a cache level or tier."""


class CodecError(CacheError):
    """Bytes could not be encoded or decoded (corrupt, foreign, unsigned or unsafe)."""


class ValueTooLarge(CacheError):
    """An encoded value is larger than the tier accepts."""


class TierUnavailable(CacheError):
    """The Redis tier cannot be reached (or its circuit breaker is open)."""


class ChannelSilent(CacheError):
    """The invalidation channel left a probe unanswered for the staleness bound.

    The listener treats it as a lost channel and reconnects; local levels stop
    answering until the channel answers again.
    """


class KeyEncodingError(TiercelError, TypeError):
    """An argument cannot be encoded into a cache key; the message names the argument."""


class LeaseError(TiercelError):
    """Base of lease (cluster-wide single-flight) errors."""


class LeaseLost(LeaseError):
    """The lease expired or was taken over while its holder was still computing."""


class PoolError(TiercelError):
    """Base of resource pool errors."""


class PoolTimeout(PoolError, TimeoutError):
    """No resource became free within the acquire timeout."""


class PoolClosed(PoolError):
    """The pool was used after it was closed."""


class ForeignResource(PoolError, ValueError):
    """A resource was released to a pool that did not hand it out (or released twice)."""


class UnknownTask(TiercelError, KeyError):
    """No cached task has that name; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class NodeSilent(TiercelError):
    """A named worker node did not answer a ping in time."""


class ServerError(TiercelError):
    """An embedded redis-server could not be started or reached."""


class ComputationFailed(TiercelError):
    """The one computation of a key failed in another process; waiters get its error.

    ``error_type`` and ``message`` describe the original exception. Callers
    joined to the same Celery task receive the original exception itself.
    """

    def __init__(self, key: str, error_type: str, message: str) -> None:
        super().__init__(
            f"the computation of {key} failed in another process: {error_type}: {message}"
        )
        self.key = key
        self.error_type = error_type
        self.message = message
