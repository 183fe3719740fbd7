"""tiercel core: framework-free cache levels, the Redis tier and the multi-level cache."""

from tiercel.core.errors import (
    CacheError,
    CodecError,
    KeyEncodingError,
    LeaseError,
    LeaseLost,
    PoolClosed,
    PoolError,
    PoolTimeout,
    ServerError,
    SettingsError,
    TiercelError,
    TierUnavailable,
    ValueTooLarge,
)
from tiercel.core.settings import Settings

__all__ = [
    "CacheError",
    "CodecError",
    "KeyEncodingError",
    "LeaseError",
    "LeaseLost",
    "PoolClosed",
    "PoolError",
    "PoolTimeout",
    "ServerError",
    "Settings",
    "SettingsError",
    "TierUnavailable",
    "TiercelError",
    "ValueTooLarge",
]
