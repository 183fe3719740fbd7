"""tiercel core: framework-free cache levels, the Redis tier and the multi-level cache."""

from tiercel.core.errors import (
    CacheError,
    CodecError,
    ComputationFailed,
    ForeignResource,
    KeyEncodingError,
    LeaseError,
    LeaseLost,
    NodeSilent,
    PoolClosed,
    PoolError,
    PoolTimeout,
    ServerError,
    SettingsError,
    TiercelError,
    TierUnavailable,
    UnknownTask,
    ValueTooLarge,
)
from tiercel.core.settings import Settings

__all__ = [
    "CacheError",
    "CodecError",
    "ComputationFailed",
    "ForeignResource",
    "KeyEncodingError",
    "LeaseError",
    "LeaseLost",
    "NodeSilent",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "ServerError",
    "Settings",
    "SettingsError",
    "TierUnavailable",
    "TiercelError",
    "UnknownTask",
    "ValueTooLarge",
]
